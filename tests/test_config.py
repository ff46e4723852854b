from pathlib import Path

import pytest

from kree.config import load_config, parse_listen
from kree.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    path = tmp_path / "kree.toml"
    path.write_text(text)
    return path


def test_embedded_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.state_dir == tmp_path / "kree-state"
    assert config.store_url == f"sqlite:///{tmp_path / 'kree-state' / 'kree.db'}"
    assert config.listen_host_port == ("127.0.0.1", 8443)
    assert config.store.sqlite_synchronous == "full"
    assert config.fetch.allowed_hosts == ["*"]
    assert config.fetch.allow_private_addresses is False
    assert config.supervisor.max_running == 0
    assert config.tls_path("ca") == tmp_path / "kree-state" / "certs" / "ca.pem"
    assert config.tls_path("crl") is None


def test_state_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"KREE_STATE_DIR": str(tmp_path / "from-env")}
    assert load_config(environ=env).state_dir == tmp_path / "from-env"
    path = write(tmp_path, 'state_dir = "from-file"\n')
    # A relative path in a file is relative to the file.
    assert load_config(path, environ=env).state_dir == tmp_path / "from-file"
    assert load_config(path, state_dir="flag", environ=env).state_dir == tmp_path / "flag"


def test_file_values_and_relative_paths(tmp_path):
    path = write(
        tmp_path,
        """
[server]
listen = "[::1]:9443"
max_body_bytes = 2048
[tls]
ca = "certs/ca.pem"
crl = "/etc/kree/crl.pem"
[store]
url = "postgresql+psycopg://kree@db/kree"
sqlite_synchronous = "normal"
[fetch]
allowed_hosts = ["example.org"]
file_roots = ["data"]
timeout_seconds = 5
[supervisor]
max_running = 3
""",
    )
    config = load_config(path, environ={})
    assert config.listen_host_port == ("::1", 9443)
    assert config.server.max_body_bytes == 2048
    assert config.tls_path("ca") == tmp_path / "certs" / "ca.pem"
    assert config.tls_path("crl") == Path("/etc/kree/crl.pem")
    assert config.store_url == "postgresql+psycopg://kree@db/kree"
    assert config.fetch.file_roots == [str(tmp_path / "data")]
    assert config.fetch.timeout_seconds == 5.0 and isinstance(config.fetch.timeout_seconds, float)
    assert config.supervisor.max_running == 3


def test_listen_flag_wins(tmp_path):
    path = write(tmp_path, '[server]\nlisten = "0.0.0.0:1"\n')
    assert load_config(path, listen="127.0.0.1:7000", environ={}).server.listen == "127.0.0.1:7000"


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        """
colour = "blue"
[server]
listen = "nowhere"
port = 1
[store]
sqlite_synchronous = "off"
pool_size = "four"
[fetch]
allowed_hosts = "example.org"
max_bytes = -1
allow_private_addresses = 1
[mystery]
x = 1
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    problems = "\n".join(info.value.problems)
    for expected in [
        "unknown section or key 'colour'",
        "[server] unknown key 'port'",
        "server.listen",
        "store.sqlite_synchronous: must be one of normal, full",
        "store.pool_size: must be int, not str",
        "fetch.allowed_hosts: must be a list of str",
        "fetch.max_bytes: must not be negative",
        "fetch.allow_private_addresses: must be bool, not int",
        "unknown section or key 'mystery'",
    ]:
        assert expected in problems
    assert len(info.value.problems) == 9


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"))


@pytest.mark.parametrize(
    "value, expected",
    [("127.0.0.1:8443", ("127.0.0.1", 8443)), ("[::1]:0", ("::1", 0)), ("host:1", ("host", 1))],
)
def test_parse_listen(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8443", ":8443", "host:", "host:http", "host:70000"])
def test_parse_listen_refuses(value):
    with pytest.raises(ValueError):
        parse_listen(value)


def test_documented_example_is_valid_and_documents_every_key():
    """etc/kree.toml must load, and name every key the code knows."""
    import attrs

    from kree.config import _SECTIONS

    example = REPO / "etc" / "kree.toml"
    load_config(example, environ={})
    text = example.read_text()
    for section, cls in _SECTIONS.items():
        assert f"[{section}]" in text
        for field in attrs.fields(cls):
            assert f"{field.name} =" in text, f"{section}.{field.name} is not documented"
    # Each installed backend's section, with every key of it, after its header.
    for name, settings in load_config(example, environ={}).backend_settings.items():
        assert f"[backends.{name}]" in text, f"[backends.{name}] is not documented"
        own = text.split(f"[backends.{name}]", 1)[1].split("\n[", 1)[0]
        for field in attrs.fields(type(settings)):
            assert f"\n{field.name} =" in own, f"backends.{name}.{field.name} is not documented"
    assert "\n[slurm]" not in text, "the example uses the deprecated name"


def test_the_slurm_section(tmp_path):
    config = load_config(write(tmp_path, '[supervisor]\ndefault_backend = "slurm"\n'
                                         '[backends.slurm]\nenabled = true\n'
                                         'job_root = "shared/jobs"\n'
                                         'bin_dir = "slurm/bin"\nsbatch_args = ["--qos=x"]\n'))
    assert config.backends == ("local", "slurm")
    assert config.job_root("slurm") == tmp_path / "shared" / "jobs"
    assert config.job_root("local") == config.jobs_dir
    slurm = config.backend_settings["slurm"]
    assert slurm.bin_dir == str(tmp_path / "slurm" / "bin")
    assert slurm.pause_method == "suspend" and slurm.max_jobs == 1000
    assert slurm.sbatch_args == ["--qos=x"]

    assert load_config(write(tmp_path, "")).backends == ("local",)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '[supervisor]\ndefault_backend = "slurm"\n'
                                    '[backends.slurm]\npause_method = "freeze"\n'
                                    'poll_seconds = 0\nsbatch_args = "--qos=x"\nqueue = 1\n'))
    problems = caught.value.problems
    assert ('supervisor.default_backend: "slurm" needs [backends.slurm] enabled = true'
            in problems)
    assert any(p.startswith("backends.slurm.pause_method: must be one of suspend, signal")
               for p in problems)
    assert "backends.slurm.poll_seconds: must be greater than 0" in problems
    assert "backends.slurm.sbatch_args: must be a list of str" in problems
    assert any(p.startswith("[backends.slurm] unknown key 'queue'") for p in problems)
    assert len(problems) == 5


def test_the_old_slurm_section_still_works_with_a_warning(tmp_path):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        config = load_config(write(tmp_path, '[slurm]\nenabled = true\njob_root = "shared"\n'
                                             'max_jobs = 7\n'))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert config.backends == ("local", "slurm")
    assert config.backend_settings["slurm"].max_jobs == 7
    assert config.job_root("slurm") == tmp_path / "shared"
    warnings = [e for e in events if e.get("old") == "slurm"]
    assert len(warnings) == 1 and warnings[0]["log_level"].name == "warn"
    assert warnings[0]["name"] == "slurm"

    # Its old name in the messages, as the file has it.
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '[slurm]\npoll_seconds = 0\n'))
    assert caught.value.problems == ["slurm.poll_seconds: must be greater than 0"]

    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '[slurm]\nenabled = true\n'
                                    '[backends.slurm]\nenabled = true\n'))
    assert caught.value.problems == [
        "[slurm] and [backends.slurm] are both given: [slurm] is the old name of "
        "[backends.slurm]; keep only that one"]


def test_a_backend_that_is_not_installed_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '[backends.nope]\nenabled = true\n'
                                    '[backends.local]\nenabled = true\n'))
    assert caught.value.problems == [
        "[backends.nope]: no backend 'nope' is installed (installed: local, slurm)",
        "[backends.local] unknown key 'enabled' (it has no keys)"]
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, 'backends = 3\n'))
    assert caught.value.problems == ["[backends] must be a table"]


def test_the_default_backend_must_be_installed_and_enabled(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '[supervisor]\ndefault_backend = "cloud"\n'))
    assert caught.value.problems == [
        'supervisor.default_backend: no backend "cloud" is installed (installed: local, slurm)']
    config = load_config(write(tmp_path, '[supervisor]\ndefault_backend = "slurm"\n'
                                         '[backends.slurm]\nenabled = true\n'))
    assert config.supervisor.default_backend == "slurm"
