"""A small actor package, as a third party would ship one (used by the tests)."""

from setuptools import setup

setup(
    name="kree-example-actors",
    version="1.0",
    py_modules=["kree_example_actors"],
    entry_points={"kree.actors": ["example = kree_example_actors"]},
)
