"""
KREE, the Kepler Remote Execution Engine.

The top-level migrations/ directory installs as the package kree.migrations,
so an installed kreed finds its alembic revisions without the source tree.
"""

from setuptools import find_packages, setup

setup(
    name="kree",
    version="0.1.0",
    description="Kepler Remote Execution Engine: runs scientific workflows for trusted web frontends",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["kree", "kree.*"])
    + ["kree.migrations", "kree.migrations.versions"],
    package_dir={"kree.migrations": "migrations"},
    package_data={"kree.migrations": ["script.py.mako"], "kree.api": ["openapi.json"]},
    install_requires=[
        "twisted[tls]>=24.3",
        "sqlalchemy>=2.0,<3",
        "alembic>=1.13",
        "pyopenssl>=24.0",
        "service-identity>=24.1",
        "psutil>=5.9",
        "attrs>=23.1",
        # XML from outside (uploaded workflows) is parsed without entities or
        # external fetches; hand-rolled expat hardening is easy to get wrong.
        "defusedxml>=0.7",
        # CWL workflows (kree.cwl) run with cwltool, the reference runner: it
        # passes 82 of the 83 required conformance tests here without
        # containers, and brings ruamel.yaml, the safe YAML loader that
        # uploads of CWL documents are parsed with.
        "cwltool>=3.3,<3.4",
    ],
    extras_require={
        "postgresql": ["psycopg[binary]>=3.1"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.2",
            "psycopg[binary]>=3.1",
            # The actor-package test installs tests/actor_package without build
            # isolation; setuptools builds wheels by itself from 70.1 on.
            "setuptools>=70.1",
            # Responses are checked against the OpenAPI document.
            "jsonschema>=4.18",
            "openapi-spec-validator>=0.7",
            # WES answers are checked against the standard's OpenAPI 3.0
            # schemas (tests/wes_schema.py), which use nullable.
            "openapi-schema-validator>=0.6",
            "pyyaml>=6",
            # Drives the OpenAPI document against a live kreed (no 5xx, no
            # schema violation).
            "schemathesis>=4",
            # The import contracts in .importlinter (tests/test_import_contracts.py):
            # the layering of DESIGN.md checked, not just drawn.
            "import-linter>=2.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "kreed = kree.daemon:main",
            "kree-admin = kree.admin.cli:main",
            "kree = kree.cli:main",
            "kree-engine = kree.engine.cli:main",
        ],
        # Execution backends (kree.backends.registry): a backend of another
        # distribution is installed the same way, under its own name.
        "kree.backends": [
            "local = kree.backends.local:LocalBackend",
            "slurm = kree.backends.slurm:SlurmBackend",
        ],
    },
)
