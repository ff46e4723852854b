"""
kree.backends.proctree against real process trees: a "job" whose root
starts a plain child, a busy-looping child and a grandchild that escapes
with setsid and is reparented to init.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from kree.backends import proctree
from waiting import holds_for, wait_for

# The job's root: a normal child (sleep 61), a busy loop, and `setsid sleep 62`
# started from a shell that exits at once, so the sleep has its own session
# and no parent in the job; then the root sleeps itself.
SCRIPT = r"""
import subprocess, sys, time
subprocess.Popen(["sleep", "61"])
subprocess.Popen([sys.executable, "-c", "while True: pass"])
subprocess.Popen(["sh", "-c", "setsid sleep 62 & exit 0"]).wait()
time.sleep(60)
"""
# root + sleep 61 + busy loop + escaped sleep 62
JOB_SIZE = 4
DEADLINE = 10.0


def _unique() -> str:
    return f"test-{uuid.uuid4().hex}"


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Job:
    """A job tree started like the local backend starts an engine."""

    def __init__(self, script=SCRIPT, size=JOB_SIZE):
        self.id = _unique()
        self.seen: dict[int, psutil.Process] = {}
        self.ref = None
        self.escapes = script is SCRIPT  # has the escaped grandchild
        self.popen = subprocess.Popen(
            [sys.executable, "-c", script], env={**os.environ, proctree.ENV_VAR: self.id},
            start_new_session=True,
        )
        self.ref = proctree.ref_for(self.popen.pid)
        self.wait_for(size)

    def processes(self) -> list[psutil.Process]:
        procs = proctree.job_processes(self.ref, self.id)
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def wait_for(self, count: int) -> list[psutil.Process]:
        """
        Poll until the job has C{count} processes, and (for the default
        script) the escaped grandchild is really `sleep 62` in its own
        session: for a moment it is still the forked shell or `setsid`.
        """
        deadline = time.monotonic() + DEADLINE
        while True:
            procs = self.processes()
            if len(procs) == count and (not self.escapes or self._escaped_ready()):
                return procs
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} processes, found {procs}")
            time.sleep(0.02)

    def _escaped_ready(self) -> bool:
        try:
            escaped = self.find("sleep", "62")
            return os.getsid(escaped.pid) == escaped.pid
        except (AssertionError, psutil.Error, OSError):
            return False

    def find(self, *cmdline: str) -> psutil.Process:
        """The job's process whose command line is C{cmdline} (the interpreter aside)."""
        for p in self.processes():
            try:
                args = p.cmdline()
            except psutil.Error:
                continue
            if args == list(cmdline) or (args[:1] == [sys.executable] and args[1:] == list(cmdline)):
                return p
        raise AssertionError(f"no process {cmdline}")

    @property
    def busy(self) -> psutil.Process:
        return self.find("-c", "while True: pass")

    def cleanup(self) -> None:
        try:
            proctree.kill(self.ref, self.id, timeout=2)
        finally:
            # Belt and braces: whatever we ever saw, in case kill() is broken.
            for p in self.seen.values():
                try:
                    p.kill()
                except psutil.Error:
                    pass
            if self.popen.poll() is None:
                self.popen.kill()
            self.popen.wait(timeout=5)


@pytest.fixture
def jobs():
    started: list[Job] = []

    def start(*args, **kwargs) -> Job:
        job = Job.__new__(Job)
        started.append(job)
        job.__init__(*args, **kwargs)
        return job

    try:
        yield start
    finally:
        for job in started:
            if hasattr(job, "popen"):
                job.cleanup()


@pytest.fixture
def job(jobs) -> Job:
    return jobs()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def test_finds_root_child_and_escaped_grandchild(jobs):
    job = jobs()
    other = jobs()
    procs = job.processes()
    pids = [p.pid for p in procs]
    assert len(procs) == JOB_SIZE
    assert pids[0] == job.popen.pid
    child = job.find("sleep", "61")
    escaped = job.find("sleep", "62")
    assert child.ppid() == job.popen.pid
    # Really escaped: not our descendant, its own session and group.
    assert escaped.ppid() != job.popen.pid
    assert escaped.pid not in [c.pid for c in psutil.Process(job.popen.pid).children(True)]
    assert os.getsid(escaped.pid) == escaped.pid != os.getsid(job.popen.pid)
    assert os.getpgid(escaped.pid) != os.getpgid(job.popen.pid)
    # Parents before children.
    for i, p in enumerate(procs):
        assert p.ppid() not in pids[i + 1:]
    # The other job's processes are not ours, and vice versa.
    other_pids = {p.pid for p in other.processes()}
    assert other_pids and not other_pids & set(pids)


def test_never_self_or_ancestors(job):
    me = proctree.ref_for(os.getpid())
    procs = proctree.job_processes(me, "no-such-job")
    excluded = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    assert not excluded & {p.pid for p in procs}
    # Our descendants (the job's root and its tree) are found through the root.
    assert job.popen.pid in {p.pid for p in procs}


def test_dead_root_without_ref(job):
    """Orphans are found by the marker alone."""
    job.popen.kill()
    job.popen.wait()
    assert not proctree.is_alive(job.ref)
    assert len(job.wait_for(JOB_SIZE - 1)) == JOB_SIZE - 1
    assert len(proctree.job_processes(None, job.id)) == JOB_SIZE - 1


def test_pause_and_resume(job):
    busy = job.busy
    assert proctree.pause(job.ref, job.id) == JOB_SIZE
    assert proctree.all_stopped(job.ref, job.id)
    assert all(p.status() == psutil.STATUS_STOPPED for p in job.processes())
    before = _cpu(busy)
    holds_for(lambda: _cpu(busy) - before < 0.02, "no CPU time while paused", duration=0.5)
    # Pausing again finds nothing left to stop.
    assert proctree.pause(job.ref, job.id) == 0

    assert proctree.resume(job.ref, job.id) == JOB_SIZE
    assert not proctree.all_stopped(job.ref, job.id)
    assert all(p.status() != psutil.STATUS_STOPPED for p in job.processes())
    before = _cpu(busy)
    wait_for(lambda: _cpu(busy) - before > 0.05, "CPU time again once resumed")


def test_pause_catches_forks():
    """A process forking continuously: later rounds stop the new children."""
    script = (
        "import os, time\n"
        "while True:\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(0.05); os._exit(0)\n"
        "    try:\n"
        "        while os.waitpid(-1, os.WNOHANG)[0]: pass\n"
        "    except ChildProcessError: pass\n"
        "    time.sleep(0.005)\n"
    )
    job_id = _unique()
    popen = subprocess.Popen([sys.executable, "-c", script],
                             env={**os.environ, proctree.ENV_VAR: job_id},
                             start_new_session=True)
    ref = proctree.ref_for(popen.pid)
    try:
        wait_for(lambda: psutil.Process(popen.pid).children(), "a first forked child")
        assert proctree.pause(ref, job_id) >= 1
        assert proctree.all_stopped(ref, job_id)
    finally:
        proctree.kill(ref, job_id, timeout=2)
        popen.kill()
        popen.wait(timeout=5)
    assert proctree.job_processes(None, job_id) == []


def test_kill_everything(job):
    recorded = list(job.processes())
    assert len(recorded) == JOB_SIZE
    assert proctree.kill(job.ref, job.id) == JOB_SIZE
    job.popen.wait(timeout=5)
    assert all(_gone(p) for p in recorded), [p for p in recorded if not _gone(p)]
    assert proctree.job_processes(None, job.id) == []
    assert not proctree.is_alive(job.ref)
    assert proctree.kill(job.ref, job.id) == 0
    assert proctree.kill(None, job.id) == 0


def test_kill_paused_job(job):
    recorded = list(job.processes())
    proctree.pause(job.ref, job.id)
    assert proctree.kill(job.ref, job.id) == JOB_SIZE
    job.popen.wait(timeout=5)
    assert all(_gone(p) for p in recorded)


def test_kill_orphans_after_root_died(job):
    recorded = list(job.processes())
    job.popen.kill()
    job.popen.wait()
    assert proctree.kill(job.ref, job.id) == JOB_SIZE - 1
    assert all(_gone(p) for p in recorded)
    assert proctree.kill(None, job.id) == 0


def test_terminate(job):
    assert proctree.terminate(job.ref)
    assert job.popen.wait(timeout=5) == -signal.SIGTERM
    assert not proctree.terminate(job.ref)
    # Only the root was signalled: its children remain, found by the marker.
    assert len(proctree.job_processes(job.ref, job.id)) == JOB_SIZE - 1


def test_is_alive():
    popen = subprocess.Popen([sys.executable, "-c", "pass"])
    ref = proctree.ref_for(popen.pid)
    popen.wait()
    assert not proctree.is_alive(ref)
    with pytest.raises(ProcessLookupError):
        proctree.ref_for(popen.pid)

    me = proctree.ref_for(os.getpid())
    assert proctree.is_alive(me)
    assert not proctree.is_alive(proctree.ProcessRef(me.pid, me.create_time - 100))
    assert not proctree.is_alive(None)


def test_is_alive_zombie():
    popen = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        ref = proctree.ref_for(popen.pid)
        deadline = time.monotonic() + DEADLINE
        while psutil.Process(popen.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not proctree.is_alive(ref)
        assert not proctree.terminate(ref)
    finally:
        popen.wait()


def test_usage(job):
    # A busy child on a loaded machine: wait for its CPU time, not a fixed sleep.
    deadline = time.monotonic() + DEADLINE
    while True:
        usage = proctree.usage(job.ref, job.id)
        if usage.cpu_seconds > 0.1:
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.05)
    assert usage.processes == JOB_SIZE == len(job.processes())
    assert usage.rss_bytes > 1_000_000


def test_usage_many_answers_for_each_job_from_one_scan(jobs):
    first, second = jobs(), jobs()
    deadline = time.monotonic() + DEADLINE
    while True:
        many = proctree.usage_many({first.id: first.ref, second.id: second.ref,
                                    "no-such-job": None})
        if all(many[j.id].cpu_seconds > 0.1 for j in (first, second)):
            break
        assert time.monotonic() < deadline, many
        time.sleep(0.05)
    for job in (first, second):
        one = proctree.usage(job.ref, job.id)
        assert many[job.id].processes == one.processes == JOB_SIZE
        assert many[job.id].rss_bytes > 1_000_000
        assert abs(many[job.id].cpu_seconds - one.cpu_seconds) < 1.0
    assert many["no-such-job"] == proctree.Usage(cpu_seconds=0.0, rss_bytes=0, processes=0)


@pytest.mark.parametrize("block, expected", [
    (b"A=1\0KREE_JOB_ID=abc\0B=2\0", "abc"),
    (b"KREE_JOB_ID=first\0KREE_JOB_ID=last\0", "last"),  # the last assignment wins
    (b"XKREE_JOB_ID=no\0", None),  # only a whole name counts
    (b"A=1\0KREE_JOB_ID=cut", None),  # an unterminated last entry is ignored
    (b"KREE_JOB_ID=x\0\0KREE_JOB_ID=after-the-end\0", "x"),  # the block ends at \0\0
    (b"\0KREE_JOB_ID=y\0", None),
    (b"", None),
])
def test_the_environment_marker_is_read_as_psutil_reads_it(block, expected):
    assert proctree._marker(block) == expected


def test_usage_counts_waited_children(jobs):
    job = jobs(
        "import subprocess, sys, time\n"
        "subprocess.run([sys.executable, '-c', "
        "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass'])\n"
        "print('done', flush=True)\n"
        "time.sleep(60)\n",
        size=1,
    )
    # Once the child is gone (reaped) only the root is left, and its
    # children_user/children_system carry the child's CPU time.
    deadline = time.monotonic() + DEADLINE
    while True:
        usage = proctree.usage(job.ref, job.id)
        if usage.processes == 1 and usage.cpu_seconds >= 0.3:
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.05)


def test_empty_job():
    job_id = _unique()
    assert proctree.job_processes(None, job_id) == []
    assert proctree.pause(None, job_id) == 0
    assert proctree.resume(None, job_id) == 0
    assert proctree.kill(None, job_id) == 0
    assert proctree.all_stopped(None, job_id)
    assert proctree.usage(None, job_id) == proctree.Usage(0.0, 0, 0)
    assert not proctree.terminate(None)


def test_ref_json_round_trip():
    ref = proctree.ref_for(os.getpid())
    assert proctree.ProcessRef.from_json(ref.to_json()) == ref
    import json
    assert proctree.ProcessRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    assert proctree.ProcessRef.from_json({"pid": 5, "create_time": 7}) == proctree.ProcessRef(5, 7.0)


@pytest.mark.parametrize("data", [
    {"pid": "x"}, {}, None, [], "x", {"pid": 5}, {"pid": 5, "create_time": "x"},
    {"pid": True, "create_time": 1.0}, {"pid": -1, "create_time": 1.0},
    {"pid": 5, "create_time": float("nan")}, {"pid": 5.5, "create_time": 1.0},
])
def test_ref_from_json_malformed(data):
    with pytest.raises(ValueError):
        proctree.ProcessRef.from_json(data)
