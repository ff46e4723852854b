"""
The engine as a real subprocess, speaking the protocol of DESIGN.md section 5:
events on fd 3 and in events.jsonl, answers on stdin or as files, SIGTERM,
SIGSTOP/SIGCONT, exit codes; the kree-engine command line; actor packages.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waiting import holds_for

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
ENGINE = [sys.executable, "-m", "kree.engine"]


class Engine:
    """`python -m kree.engine run JOBDIR` with fd 3 piped to us."""

    def __init__(self, tmp_path, workflow: str | bytes, parameters=None, fd3=True, env=None):
        self.job = tmp_path / "job"
        self.job.mkdir(exist_ok=True)
        data = workflow if isinstance(workflow, bytes) else (WORKFLOWS / workflow).read_bytes()
        (self.job / "workflow.xml").write_bytes(data)
        if parameters:
            (self.job / "parameters.json").write_text(json.dumps(parameters))
        read_fd, write_fd = os.pipe() if fd3 else (None, None)

        def child_setup():
            if write_fd is not None:
                os.dup2(write_fd, 3)

        self.process = subprocess.Popen(
            [*ENGINE, "run", str(self.job)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=child_setup, pass_fds=(3,) if fd3 else (),
            start_new_session=True, env={**os.environ, **(env or {})},
        )
        self.fd3 = os.fdopen(read_fd, "rb") if fd3 else None
        if write_fd is not None:
            os.close(write_fd)

    def events(self) -> list[dict]:
        path = self.job / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if any(predicate(e) for e in events):
                return events
            if self.process.poll() is not None:
                raise AssertionError(f"engine exited {self.process.returncode}: {events}")
            time.sleep(0.02)
        raise AssertionError(f"timed out; events: {self.events()}")

    def finish(self, timeout=60) -> int:
        if self.process.stdin is not None and self.process.stdin.closed:
            self.process.stdin = None  # closed on purpose; communicate() must not flush it
        try:
            self.process.communicate(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return self.process.returncode

    def fd3_events(self) -> list[dict]:
        return [json.loads(line) for line in self.fd3.read().splitlines()]


def messages(events):
    return [e["text"] for e in events if e["type"] == "message"]


def test_events_on_fd3_match_the_file(tmp_path):
    engine = Engine(tmp_path, "arithmetic.xml")
    assert engine.finish() == 0
    on_fd3 = engine.fd3_events()
    assert on_fd3 == engine.events()
    # Running sums of n * n + 10 for n = 1..5.
    assert messages(on_fd3) == ["11", "25", "44", "70", "105"]
    assert on_fd3[-1]["type"] == "end" and on_fd3[-1]["exit_code"] == 0


def test_products_are_written_with_a_manifest(tmp_path):
    engine = Engine(tmp_path, "products.xml")
    assert engine.finish() == 0
    products = engine.job / "products"
    assert (products / "numbers.txt").read_text().splitlines() == [str(i) for i in range(10)]
    assert (products / "squares.csv").read_text().splitlines()[3] == "3,9"
    assert (products / "summary.txt").read_text().endswith("45")
    manifest = json.loads((products / ".manifest.json").read_text())
    assert set(manifest) == {"numbers.txt", "squares.csv", "summary.txt"}
    assert {e["name"] for e in engine.events() if e["type"] == "product"} == set(manifest)


def test_a_failing_workflow_exits_1_with_its_reason(tmp_path):
    engine = Engine(tmp_path, "fail.xml")
    assert engine.finish() == 1
    events = engine.events()
    assert messages(events) == ["0", "1"]
    assert events[-1]["state"] == "failed"
    assert "counter reached its limit" in events[-1]["error"]


def test_waiting_then_answer_on_stdin(tmp_path):
    engine = Engine(tmp_path, "ask-input.xml")
    events = engine.wait_for(lambda e: e["type"] == "waiting")
    prompt = next(e for e in events if e["type"] == "waiting")
    assert prompt["n"] == 1 and [f["name"] for f in prompt["prompt"]["fields"]] == ["name", "count"]
    engine.process.stdin.write(json.dumps({"name": "Ada", "count": 2}).encode() + b"\n")
    engine.process.stdin.flush()
    assert engine.finish() == 0
    assert messages(engine.events()) == ["Hello Ada x2"]


def test_answer_by_file_when_stdin_is_gone(tmp_path):
    engine = Engine(tmp_path, "ask-input.xml", fd3=False)
    engine.process.stdin.close()  # as after a daemon restart: no pipe
    engine.wait_for(lambda e: e["type"] == "waiting")
    answers = engine.job / "answers"
    answers.mkdir()
    tmp = answers / ".1.json.tmp"
    tmp.write_text(json.dumps({"answers": {"name": "Grace", "count": 1}}))
    os.replace(tmp, answers / "1.json")
    assert engine.finish() == 0
    assert messages(engine.events()) == ["Hello Grace x1"]


def test_sigterm_finishes_the_firing_and_flushes_products(tmp_path):
    workflow = (WORKFLOWS / "sleep-loop.xml").read_bytes().replace(
        b'<entity name="Display" class="ptolemy.actor.lib.gui.Display"/>',
        b'<entity name="Display" class="ptolemy.actor.lib.io.LineWriter">'
        b'<property name="fileName" value="ticks.txt"/></entity>')
    engine = Engine(tmp_path, workflow, parameters={".sleeper.period": 100})
    engine.wait_for(lambda e: e["type"] == "progress" and e["fraction"] >= 0.05)
    os.kill(engine.process.pid, signal.SIGTERM)
    started = time.monotonic()
    assert engine.finish() == 3
    assert time.monotonic() - started < 5
    end = engine.events()[-1]
    assert end["type"] == "end" and end["state"] == "stopped" and end["exit_code"] == 3
    ticks = (engine.job / "products" / "ticks.txt").read_text().splitlines()
    assert ticks and ticks == [str(i) for i in range(len(ticks))]
    assert "ticks.txt" in json.loads((engine.job / "products" / ".manifest.json").read_text())


def test_sigstop_and_sigcont_leave_results_intact(tmp_path):
    engine = Engine(tmp_path, "sleep-loop.xml",
                    parameters={".sleeper.period": 50, ".sleeper.SDF Director.iterations": 20})
    engine.wait_for(lambda e: e["type"] == "message")
    os.killpg(engine.process.pid, signal.SIGSTOP)
    frozen = len(engine.events())
    holds_for(lambda: len(engine.events()) == frozen, "no event while stopped", duration=1.0)
    os.killpg(engine.process.pid, signal.SIGCONT)
    assert engine.finish() == 0
    assert messages(engine.events()) == [str(i) for i in range(20)]


def test_a_broken_fd3_is_not_an_error(tmp_path):
    engine = Engine(tmp_path, "sleep-loop.xml",
                    parameters={".sleeper.period": 20, ".sleeper.SDF Director.iterations": 10})
    engine.fd3.close()  # the daemon went away
    assert engine.finish() == 0
    assert messages(engine.events()) == [str(i) for i in range(10)]


def test_usage_errors_exit_2(tmp_path):
    result = subprocess.run([*ENGINE, "explode"], capture_output=True)
    assert result.returncode == 2


def test_validate_params_actors_and_software_commands(tmp_path):
    result = subprocess.run([*ENGINE, "validate", str(WORKFLOWS / "arithmetic.xml"),
                             "--param", ".arithmetic.offset=3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] and report["director"] == "ptolemy.domains.sdf.kernel.SDFDirector"
    assert {a["name"] for a in report["actors"]} >= {".arithmetic.Ramp", ".arithmetic.Square"}
    bad = tmp_path / "bad.xml"
    bad.write_text('<entity name="m"><entity name="X" class="no.Such"/></entity>')
    result = subprocess.run([*ENGINE, "validate", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and not json.loads(result.stdout)["valid"]
    result = subprocess.run([*ENGINE, "params", str(WORKFLOWS / "arithmetic.xml")],
                            capture_output=True, text=True)
    names = {p["name"] for p in json.loads(result.stdout)["parameters"]}
    assert {".arithmetic.offset", ".arithmetic.Ramp.step", ".arithmetic.SDF Director.iterations"} <= names
    actors = json.loads(subprocess.run([*ENGINE, "actors"], capture_output=True,
                                       text=True).stdout)["actors"]
    by_class = {a["class"]: a for a in actors}
    assert by_class["ptolemy.actor.lib.Ramp"]["package"] == "kree"
    assert by_class["ptolemy.actor.lib.python.PythonScript"]["policy"] == "reject"
    software = json.loads(subprocess.run([*ENGINE, "software"], capture_output=True,
                                         text=True).stdout)
    assert software["Python"]["path"] and set(software) >= {"R", "Octave", "Matlab", "Python"}


def test_kepler_command_line(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", "from kree.engine.cli import main; main()", "-runwf", "-nogui",
         "-redirectgui", str(out), "-iterations", "2", "-offset", "0",
         str(WORKFLOWS / "arithmetic.xml")],
        capture_output=True, text=True, timeout=60)
    # The Test actor expects the sums for offset 10: with offset 0 the first
    # token is already wrong, and unlike Kepler the failure shows in the exit code.
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "1" and "token 0 is 1, expected 11" in lines[1]
    assert (out / "events.jsonl").exists()
    result = subprocess.run(
        [sys.executable, "-c", "from kree.engine.cli import main; main()", "-runwf", "-nogui",
         "-.hello.Greeting.value", "Bonjour", str(WORKFLOWS / "hello.xml")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.splitlines()[0] == "Bonjour"
    result = subprocess.run(
        [sys.executable, "-c", "from kree.engine.cli import main; main()", "-runwf",
         "-nosuch", "1", str(WORKFLOWS / "hello.xml")], capture_output=True, text=True)
    assert result.returncode == 1 and "unknown parameter -nosuch" in result.stderr


def test_an_installed_actor_package_is_found_and_run(tmp_path):
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO / "tests" / "actor_package")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    actors = json.loads(subprocess.run([*ENGINE, "actors"], capture_output=True, text=True,
                                       env=env).stdout)["actors"]
    shout = next(a for a in actors if a["class"] == "org.example.Shout")
    assert shout["package"] == "kree-example-actors"
    workflow = (WORKFLOWS / "hello.xml").read_bytes().replace(
        b'<entity name="Display" class="ptolemy.actor.lib.gui.Display">',
        b'<entity name="Shout" class="org.example.Shout"></entity>'
        b'<entity name="Display" class="ptolemy.actor.lib.gui.Display">').replace(
        b'<link port="Display.input" relation="relation"/>',
        b'<link port="Shout.input" relation="relation"/><relation name="loud"/>'
        b'<link port="Shout.output" relation="loud"/><link port="Display.input" relation="loud"/>')
    engine = Engine(tmp_path, workflow, env=env)
    assert engine.finish() == 0
    assert messages(engine.events()) == ["HELLO, WORLD!"]


@pytest.mark.skipif(shutil.which("Rscript") is None,
                    reason="R is not installed (.ci/run installs r-base-core)")
def test_r_workflow(tmp_path):
    engine = Engine(tmp_path, "r-statistics.xml")
    assert engine.finish() == 0, engine.events()
    assert messages(engine.events()) == ["mean=5.00 sd=2.14"]


@pytest.mark.skipif(shutil.which("octave-cli") is None and shutil.which("octave") is None,
                    reason="Octave is not installed (.ci/run installs octave)")
def test_octave_workflow(tmp_path):
    engine = Engine(tmp_path, "octave-matrix.xml")
    assert engine.finish() == 0, engine.events()
    assert messages(engine.events())[0].strip() == "det=27"
