"""
kree.jobspec's check of resources.backend: against the backends the server
offers (Config.backends), never a list of names of its own.
"""

from __future__ import annotations

import pytest

from kree.config import load_config
from kree.jobspec import InvalidJobSpec, check_resources


def refusal(resources, backends, **kwargs) -> InvalidJobSpec:
    with pytest.raises(InvalidJobSpec) as caught:
        check_resources(resources, backends, **kwargs)
    assert caught.value.status == 422 and caught.value.code == "invalid_resources"
    assert caught.value.details == {"field": "backend"}
    return caught.value


def test_a_backend_the_server_offers_is_accepted():
    assert check_resources({"backend": "local", "cpus": 2}, ("local",)) == {
        "backend": "local", "cpus": 2}
    assert check_resources({"backend": "batch"}, ("local", "batch")) == {"backend": "batch"}
    assert check_resources({"cpus": 1}, ()) == {"cpus": 1}


def test_a_backend_the_server_does_not_offer_is_refused_by_name():
    assert refusal({"backend": "slurm"}, ("local",)).message == (
        "backend 'slurm' is not enabled on this server (offered: local)")
    assert refusal({"backend": "cloud"}, ("local", "slurm")).message == (
        "backend 'cloud' is not enabled on this server (offered: local, slurm)")
    refusal({"backend": ["local"]}, ("local",))
    refusal({"backend": None}, ("local",))


def test_installed_but_not_offered_is_accepted_where_asked():
    # Feasibility: a backend installed but not enabled gets a reason, not a 422.
    assert check_resources({"backend": "slurm"}, ("local",), installed=("local", "slurm")) == {
        "backend": "slurm"}
    refusal({"backend": "cloud"}, ("local",), installed=("local", "slurm"))


def test_the_configured_backends_are_what_is_offered(tmp_path):
    path = tmp_path / "kree.toml"
    assert load_config(None).backends == ("local",)
    refusal({"backend": "slurm"}, load_config(None).backends)
    path.write_text("[backends.slurm]\nenabled = true\n")
    offered = load_config(path).backends
    assert check_resources({"backend": "slurm"}, offered) == {"backend": "slurm"}
