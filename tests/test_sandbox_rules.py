"""
The sandbox's parts without a daemon: which paths kreed grants
(kree.sandbox.granted) and what an engine process that applied a spec can
still do (kree.engine.sandbox.apply, in a real subprocess).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kree.engine import sandbox
from kree.engine.sandbox import SandboxSpec
from kree.sandbox import granted

needs_landlock = pytest.mark.skipif(sandbox.landlock_abi() < 1 and not os.environ.get("CI"),
                                    reason="the kernel offers no Landlock")


def test_a_grant_that_holds_a_protected_path_is_split_around_it(tmp_path):
    (tmp_path / "a" / "state" / "certs").mkdir(parents=True)
    (tmp_path / "a" / "lib").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "link-to-state").symlink_to(tmp_path / "a" / "state")
    (tmp_path / "a" / "link-to-lib").symlink_to(tmp_path / "a" / "lib")
    out = granted([tmp_path / "a", tmp_path / "b", tmp_path / "missing"],
                  [tmp_path / "a" / "state"])
    assert sorted(out) == sorted(str(p) for p in (
        tmp_path / "a" / "lib", tmp_path / "a" / "notes.txt", tmp_path / "b"))


def test_a_protected_path_itself_is_never_granted(tmp_path):
    (tmp_path / "state").mkdir()
    assert granted([tmp_path / "state"], [tmp_path / "state"]) == []
    assert granted([tmp_path / "state" / "x"], [tmp_path / "state"]) == []


PROBE = r"""
import json, os, socket, sys
from kree.engine import sandbox
spec = sandbox.SandboxSpec.from_env(sys.argv[1])
sandbox.apply(spec)
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except OSError as e:
        out[name] = e.errno
attempt("read-secret", lambda: open(sys.argv[2]).read())
attempt("write-job", lambda: open(os.path.join(sys.argv[3], "x"), "w").write("x"))
attempt("write-elsewhere", lambda: open(sys.argv[4], "w").write("x"))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
attempt("tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("unix", lambda: [s.close() for s in socket.socketpair()])
attempt("signal-parent", lambda: os.kill(os.getppid(), 0))
print(json.dumps(out))
"""


def probe(tmp_path, spec: SandboxSpec) -> dict:
    secret = tmp_path / "secret"
    secret.write_text("key")
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, spec.to_env(), str(secret), str(job),
         str(tmp_path / "elsewhere")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def readable() -> tuple[str, ...]:
    import kree
    return tuple(p for p in {sys.prefix, sys.base_prefix, "/usr", "/lib", "/lib64", "/etc",
                             str(Path(kree.__file__).parent.parent), *sys.path} if p)


@needs_landlock
def test_an_engine_that_applied_its_spec_touches_only_its_job(tmp_path):
    spec = SandboxSpec(mode="landlock", read=readable(), write=(str(tmp_path / "job"),))
    out = probe(tmp_path, spec)
    assert out["read-secret"] == 13 and out["write-elsewhere"] == 13, out  # EACCES
    assert out["write-job"] == "allowed" and out["unix"] == "allowed", out
    assert out["udp"] == 13 and out["tcp"] == 13, out
    if sandbox.landlock_abi() >= 6:
        assert out["signal-parent"] == 1, out  # EPERM: signals stay inside
    assert not (tmp_path / "elsewhere").exists()


@needs_landlock
def test_with_network_sockets_are_allowed(tmp_path):
    spec = SandboxSpec(mode="landlock", read=readable(), write=(str(tmp_path / "job"),),
                       network=True)
    out = probe(tmp_path, spec)
    assert out["udp"] == "allowed" and out["tcp"] == "allowed", out
    assert out["read-secret"] == 13, out


def test_mode_none_contains_nothing(tmp_path):
    out = probe(tmp_path, SandboxSpec(mode="none"))
    assert out["read-secret"] == "allowed" and out["udp"] == "allowed", out


def test_an_unknown_mode_is_refused():
    with pytest.raises(sandbox.SandboxUnavailable, match="unknown sandbox mode 'jail'"):
        sandbox.apply(SandboxSpec(mode="jail"))


def test_the_spec_survives_the_environment():
    spec = SandboxSpec(mode="landlock", uid=65534, gid=65534, workdir="/x", read=("/usr",),
                       write=("/x",), network=True, cpu_seconds=3, memory_bytes=10,
                       processes=5, file_bytes=7)
    environ = {sandbox.ENV: spec.to_env()}
    assert sandbox.spec_from_environment(environ) == spec
    assert sandbox.ENV not in environ


def test_the_configuration_names_a_bad_sandbox_setting(tmp_path):
    from kree.config import load_config
    from kree.errors import ConfigError

    path = tmp_path / "kree.toml"
    path.write_text('[sandbox]\nmode = "jail"\nmax_processes = 0\n'
                    '[parameters]\nlocked = {"x.Y" = "expression"}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = "\n".join(info.value.problems)
    assert "sandbox.mode: must be one of landlock, none, not 'jail'" in problems
    assert "sandbox.max_processes" in problems
    assert "parameters.locked: must be a table of a list of str" in problems
