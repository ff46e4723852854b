"""
kreed as a real process: fresh start, clean stop, refusals and exit codes.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from kree.store import migrate
from kree.store.engine import create_engine
from kree.store.pool import DBPool

KREED = [sys.executable, "-c", "from kree.daemon import main; main()"]
# Without certificates kreed cannot serve its API (exit 2, see test_tls.py);
# these tests start it as the README does, with --dev, on a free port.
DEV = ["--dev", "--listen", "127.0.0.1:0"]


class Kreed:
    def __init__(self, tmp_path, *args, env=None, dev=True):
        args = (*DEV, *args) if dev else args
        self.stderr_path = tmp_path / f"kreed-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [*KREED, *args],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, **(env or {})},
            cwd=tmp_path,
        )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def log(self) -> list[dict]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def wait_running(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("running (pid" in r["message"] for r in self.log()):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"kreed exited {self.process.returncode}: {self.stderr}")
            time.sleep(0.05)
        raise AssertionError(f"kreed did not start: {self.stderr}")

    def wait(self, timeout=90) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._stderr.close()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


@pytest.fixture
def kreeds():
    started = []

    def start(tmp_path, *args, **kwargs):
        kreed = Kreed(tmp_path, *args, **kwargs)
        started.append(kreed)
        return kreed

    yield start
    for kreed in started:
        kreed.kill()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_fresh_start_and_clean_stop(tmp_path, kreeds, stop_signal):
    state = tmp_path / "state"
    kreed = kreeds(tmp_path, "--state-dir", str(state))
    kreed.wait_running()
    for part in ("jobs", "cache", "logs", "certs", "certs/frontends"):
        assert (state / part).is_dir()
    assert any("frontend API listening" in r["message"] for r in kreed.log())
    assert (state.stat().st_mode & 0o777) == 0o700
    assert int((state / "kreed.pid").read_text()) == kreed.process.pid
    # The database was created and migrated.
    pool = DBPool(create_engine(f"sqlite:///{state / 'kree.db'}"), reactor=None)
    status = pool.run_in_thread(migrate.schema_status)
    pool.stop()
    assert status.state is migrate.SchemaState.CURRENT
    assert (state / "kree.db").stat().st_mode & 0o077 == 0
    kreed.process.send_signal(stop_signal)
    assert kreed.wait() == 0
    assert not (state / "kreed.pid").exists()
    messages = [r["message"] for r in kreed.log()]
    assert "kreed stopping" in messages
    # Structured JSON lines, also in the log file.
    record = next(r for r in kreed.log() if "running (pid" in r["message"])
    assert record["level"] == "info" and record["pid"] == kreed.process.pid
    logged = (state / "logs" / "kreed.log").read_text().splitlines()
    assert any(json.loads(line)["message"] == "kreed stopping" for line in logged)


def test_default_state_dir_is_kree_state_in_the_working_directory(tmp_path, kreeds):
    kreed = kreeds(tmp_path, env={"KREE_STATE_DIR": ""})
    kreed.wait_running()
    assert (tmp_path / "kree-state" / "kree.db").exists()
    kreed.process.terminate()
    assert kreed.wait() == 0


def test_kree_state_dir_environment(tmp_path, kreeds):
    kreed = kreeds(tmp_path, env={"KREE_STATE_DIR": str(tmp_path / "env-state")})
    kreed.wait_running()
    assert (tmp_path / "env-state" / "kree.db").exists()
    kreed.process.terminate()
    assert kreed.wait() == 0


def test_refuses_a_database_behind_its_migrations(tmp_path, kreeds):
    state = tmp_path / "state"
    state.mkdir()
    pool = DBPool(create_engine(f"sqlite:///{state / 'kree.db'}"), reactor=None)
    pool.run_in_thread(migrate.upgrade, "0001")
    kreed = kreeds(tmp_path, "--state-dir", str(state))
    assert kreed.wait() == 3
    assert "database is behind: at revision 0001" in kreed.stderr
    assert "run `kree-admin db upgrade`" in kreed.stderr
    # It changed nothing and left no pid file behind.
    assert pool.run_in_thread(migrate.schema_status).current == ("0001",)
    pool.stop()
    assert not (state / "kreed.pid").exists()


def test_refuses_a_database_from_a_newer_kree(tmp_path, kreeds):
    state = tmp_path / "state"
    state.mkdir()
    pool = DBPool(create_engine(f"sqlite:///{state / 'kree.db'}"), reactor=None)
    pool.run_in_thread(migrate.upgrade)
    pool.run_in_thread(lambda c: c.execute(sa.text("UPDATE alembic_version SET version_num='9999'")))
    pool.stop()
    kreed = kreeds(tmp_path, "--state-dir", str(state))
    assert kreed.wait() == 3
    assert "newer KREE" in kreed.stderr


def test_bad_configuration_exits_2_with_every_problem(tmp_path, kreeds):
    config = tmp_path / "kree.toml"
    config.write_text('[server]\nlisten = "nope"\n[store]\ncolour = 1\n')
    kreed = kreeds(tmp_path, "--config", str(config), dev=False)
    assert kreed.wait() == 2
    assert "server.listen" in kreed.stderr and "unknown key 'colour'" in kreed.stderr
    kreed = kreeds(tmp_path, "--listen", "bad", "--state-dir", str(tmp_path / "s"), dev=False)
    assert kreed.wait() == 2
    kreed = kreeds(tmp_path, "--no-such-flag", dev=False)
    assert kreed.wait() == 2


def test_second_kreed_on_one_state_dir_is_refused(tmp_path, kreeds):
    state = tmp_path / "state"
    first = kreeds(tmp_path, "--state-dir", str(state))
    first.wait_running()
    second = kreeds(tmp_path, "--state-dir", str(state))
    assert second.wait() == 1
    assert f"another kreed (pid {first.process.pid})" in second.stderr
    assert int((state / "kreed.pid").read_text()) == first.process.pid
    first.process.terminate()
    assert first.wait() == 0


def test_stale_pid_file_is_taken_over(tmp_path, kreeds):
    state = tmp_path / "state"
    state.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (state / "kreed.pid").write_text(f"{dead.pid}\n")
    kreed = kreeds(tmp_path, "--state-dir", str(state))
    kreed.wait_running()
    assert int((state / "kreed.pid").read_text()) == kreed.process.pid
    kreed.process.terminate()
    assert kreed.wait() == 0


def test_unreachable_database_exits_1(tmp_path, kreeds):
    config = tmp_path / "kree.toml"
    config.write_text('[store]\nurl = "postgresql+psycopg://nobody@127.0.0.1:1/none"\n')
    kreed = kreeds(tmp_path, "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert kreed.wait() == 1
    assert "failed to start" in kreed.stderr


@pytest.mark.postgresql
def test_runs_on_postgresql(tmp_path, kreeds, postgres_url):
    config = tmp_path / "kree.toml"
    config.write_text(f"[store]\nurl = {json.dumps(postgres_url)}\n")
    kreed = kreeds(tmp_path, "--config", str(config), "--state-dir", str(tmp_path / "s"))
    kreed.wait_running()
    assert not (tmp_path / "s" / "kree.db").exists()
    pool = DBPool(create_engine(postgres_url), reactor=None)
    assert pool.run_in_thread(migrate.schema_status).state is migrate.SchemaState.CURRENT
    pool.stop()
    kreed.process.terminate()
    assert kreed.wait() == 0
