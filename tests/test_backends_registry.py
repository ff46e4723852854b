"""
Backends are plug-ins: found through the entry point group kree.backends,
configured under [backends.<name>], built by kree.backends.registry.

A third-party backend is installed here for real: a distribution's metadata
(.dist-info with entry_points.txt) and its module, on sys.path, found by
importlib.metadata like any installed package.
"""

from __future__ import annotations

import textwrap

import pytest
from twisted.internet import reactor

from kree.backends import registry
from kree.backends.local import LocalBackend
from kree.backends.slurm import SlurmBackend
from kree.config import load_config
from kree.errors import ConfigError

DEMO_MODULE = '''
from __future__ import annotations

import attrs

from kree.backends import Backend


@attrs.frozen
class DemoConfig:
    enabled: bool = False
    job_root: str = attrs.field(default="", metadata={"path": True})
    max_jobs: int = attrs.field(default=3, metadata={"positive": True})
    colour: str = attrs.field(default="red", metadata={"choices": ("red", "blue")})


class DemoBackend(Backend):
    """A backend of another distribution; these tests never start a job on it."""

    name = "demo"
    batch = True
    config_type = DemoConfig

    @classmethod
    def from_config(cls, reactor, observer, settings, config, sandbox=None):
        return cls(reactor, observer, settings, config.state_dir)

    def __init__(self, reactor, observer, settings, state_dir):
        self.reactor, self.observer, self.settings = reactor, observer, settings
        self.state_dir = state_dir
        self.max_jobs = settings.max_jobs

    async def start(self, job): raise NotImplementedError
    async def adopt(self, job): raise NotImplementedError
    async def pause(self, job): raise NotImplementedError
    async def resume(self, job): raise NotImplementedError
    async def terminate(self, job): raise NotImplementedError
    async def kill(self, job): raise NotImplementedError
    async def answer(self, job, n, answer): raise NotImplementedError
    async def usage(self, job): raise NotImplementedError
    async def wait_exited(self, job_id): raise NotImplementedError
    async def detach(self): raise NotImplementedError
'''


def install(site, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution on the path C{site}: its metadata and its modules."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, text in modules.items():
        (site / f"{name}.py").write_text(text)


@pytest.fixture
def demo(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(site, "kree_demo_backend", "[kree.backends]\ndemo = kree_demo_backend:DemoBackend\n",
            {"kree_demo_backend": DEMO_MODULE})
    monkeypatch.syspath_prepend(str(site))
    yield site


def write(tmp_path, text):
    path = tmp_path / "kree.toml"
    path.write_text(text)
    return path


def test_our_own_backends_are_installed_through_the_entry_point():
    classes = registry.installed()
    assert classes == {"local": LocalBackend, "slurm": SlurmBackend}


def test_an_installed_backend_is_found_configured_and_built(tmp_path, demo):
    import kree_demo_backend

    assert list(registry.installed()) == ["local", "demo", "slurm"]
    config = load_config(write(tmp_path, '[backends.demo]\nenabled = true\njob_root = "d"\n'
                                         'colour = "blue"\n'
                                         '[supervisor]\ndefault_backend = "demo"\n'))
    assert config.backends == ("local", "demo")
    assert config.installed_backends == ("local", "demo", "slurm")
    assert config.backend_settings["demo"] == kree_demo_backend.DemoConfig(
        enabled=True, job_root=str(tmp_path / "d"), colour="blue")
    assert config.job_root("demo") == tmp_path / "d"

    observer = object()
    backends = registry.build_backends(config, reactor, observer)
    assert list(backends) == ["local", "demo"]
    local, built = backends["local"], backends["demo"]
    assert isinstance(local, LocalBackend) and local.observer is observer
    assert local.max_jobs is None
    assert isinstance(built, kree_demo_backend.DemoBackend)
    assert built.observer is observer and built.reactor is reactor
    assert built.state_dir == config.state_dir and built.max_jobs == 3

    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '[backends.demo]\ncolour = "green"\nmax_jobs = 0\n'))
    assert caught.value.problems == [
        "backends.demo.colour: must be one of red, blue, not 'green'",
        "backends.demo.max_jobs: must be greater than 0"]


def test_the_slurm_backend_is_built_with_its_settings(tmp_path):
    config = load_config(write(tmp_path, '[backends.slurm]\nenabled = true\nmax_jobs = 4\n'
                                         'pause_method = "signal"\n'))
    backends = registry.build_backends(config, reactor, object())
    assert list(backends) == ["local", "slurm"]
    slurm = backends["slurm"]
    assert isinstance(slurm, SlurmBackend)
    assert slurm.settings is config.backend_settings["slurm"]
    assert slurm.max_jobs == 4 and slurm.settings.pause_method == "signal"
    assert list(registry.build_backends(load_config(None), reactor, object())) == ["local"]


def test_a_broken_backend_is_a_configuration_error_naming_it(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(site, "kree_broken_backends",
            "[kree.backends]\nbroken = kree_broken:Broken\nwrong = kree_wrong:NotABackend\n",
            {"kree_broken": "raise ImportError('needs a library that is missing')\n",
             "kree_wrong": "class NotABackend:\n    name = 'wrong'\n"})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError) as caught:
        load_config(None)
    # The working backends are still there: nothing else is reported.
    assert caught.value.problems == [
        "backend 'broken' (kree_broken:Broken) cannot be loaded: "
        "ImportError: needs a library that is missing",
        "backend 'wrong' (kree_wrong:NotABackend) is not a kree.backends.Backend named 'wrong'"]
    with pytest.raises(ConfigError):
        registry.installed()


def test_each_backend_words_its_own_admin_status():
    """kree-admin status asks the backend's class, not a list of names, how to show it."""
    assert LocalBackend.describe_status({"name": "local", "jobs": 1, "limit": 4}) == ("", [])
    more, lines = SlurmBackend.describe_status({
        "name": "slurm", "jobs": 2, "limit": 1000, "controller": "up", "pause_method": "suspend",
        "accounting": None, "last_poll_seconds_ago": 1.5,
        "queue": [{"job": "j1", "slurm_job_id": 41, "state": "PENDING", "reason": "Resources",
                   "node": ""},
                  {"job": "j2", "slurm_job_id": 42, "state": None, "reason": "None",
                   "node": "node7"}]})
    assert more == "; controller up (asked 1.5 s ago); pause by suspend; accounting not asked yet"
    assert lines == ["  j1  Slurm job 41  PENDING  Resources", "  j2  Slurm job 42  ?  on node7"]


@pytest.mark.parametrize("section", ["backends.slurm", "slurm"])
def test_kreed_offers_an_enabled_backend_and_says_so(tmp_path, section):
    """
    A live kreed with the Slurm backend enabled (under its new and its old
    section name) offers it in /v1 and kree-admin status, whether or not a
    cluster answers: here its commands are looked for in an empty directory.
    """
    from live import LiveKree

    (tmp_path / "no-slurm").mkdir()
    server = LiveKree(tmp_path, frontends=("portal",),
                      config_text=f'[{section}]\nenabled = true\nbin_dir = "no-slurm"\n'
                                  "max_jobs = 5\n").start()
    try:
        portal = server.client("portal")
        assert portal.get("/v1/service-info").json["backends"] == ["local", "slurm"]
        assert portal.get("/v1/capabilities").json["backends"] == ["local", "slurm"]
        status = server.admin("status")
        assert status.returncode == 0, status.stderr
        assert "backend local: 0 of " in status.stdout
        assert "backend slurm: 0 of 5 jobs; controller unreachable: squeue" in status.stdout
    finally:
        server.stop()
    deprecated = "[slurm] is deprecated; call it [backends.slurm]"
    assert (deprecated in server.log) == (section == "slurm")
