"""
The workflow checker's limits (kree.validation, issue 14 item 4): wall clock,
memory, concurrency, cancellation, and a checker killed by a signal; with
real `kree.engine validate` subprocesses on the real reactor, and through a
live kreed for the HTTP answers.
"""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

from kree.config import ValidationConfig, load_config
from kree.errors import ConfigError
from kree.validation import CheckerBusy, WorkflowChecker, WorkflowCheckFailed

MIB = 1024 * 1024


def model(times: int) -> bytes:
    """Ramp -> Repeat(numberOfTimes) -> Display under SDF: the schedule has C{times} firings."""
    return (
        '<?xml version="1.0"?>\n'
        '<entity name="model" class="ptolemy.actor.TypedCompositeActor">'
        '<property name="director" class="ptolemy.domains.sdf.kernel.SDFDirector">'
        '<property name="iterations" value="1"/></property>'
        '<entity name="Ramp" class="ptolemy.actor.lib.Ramp"/>'
        '<entity name="Rep" class="ptolemy.domains.sdf.lib.Repeat">'
        f'<property name="numberOfTimes" value="{times}"/></entity>'
        '<entity name="Display" class="ptolemy.actor.lib.gui.Display"/>'
        '<relation name="r1"/><relation name="r2"/>'
        '<link port="Ramp.output" relation="r1"/><link port="Rep.input" relation="r1"/>'
        '<link port="Rep.output" relation="r2"/><link port="Display.input" relation="r2"/>'
        "</entity>"
    ).encode()


HUGE = model(2_000_000_000)


def document(tmp_path, data: bytes):
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / f"{sha}.xml"
    path.write_bytes(data)
    return path, sha


def checker(**limits) -> WorkflowChecker:
    return WorkflowChecker(reactor, limits=ValidationConfig(**limits))


async def wait_until(condition, seconds: float = 60.0, what: str = "the condition"):
    """Poll C{condition} on the reactor until it is true or the deadline passes."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


async def started(check: WorkflowChecker, count: int = 1) -> list[int]:
    """The pids once C{count} checks run (each in a session of its own, so killable whole)."""
    await wait_until(lambda: len(check.running_pids()) >= count, what="the checker to start")
    pids = check.running_pids()
    # --new-session: the checker becomes its own group leader first thing.
    await wait_until(lambda: all(_pgid(pid) == pid for pid in pids), what="its own session")
    return pids


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- the checker ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_workflow_within_the_limits_is_checked_and_cached(tmp_path):
    check = checker(timeout_seconds=60, max_memory_bytes=256 * MIB)
    path, sha = document(tmp_path, model(3))
    checked = await check.check(path, sha, {})
    assert checked.valid, checked.problems
    assert checked.parameters[".model.Rep.numberOfTimes"]["default"] == "3"
    assert check.running_pids() == []
    path.unlink()  # a second check is answered from the cache, without the engine
    assert await check.check(path, sha, {}) == checked


@pytest_twisted.ensureDeferred
async def test_a_check_past_its_time_limit_is_killed_and_says_so(tmp_path):
    check = checker(timeout_seconds=2, max_memory_bytes=512 * MIB)
    path, sha = document(tmp_path, HUGE)
    began = time.monotonic()
    pending = Deferred.fromCoroutine(check.check(path, sha, {}))
    (pid,) = await started(check)
    with pytest.raises(WorkflowCheckFailed) as caught:
        await pending
    elapsed = time.monotonic() - began
    assert caught.value.status == 422 and caught.value.code == "workflow_check_failed"
    assert caught.value.details == {"limit": "time", "limit_seconds": 2.0}
    assert "longer than the limit of 2 s" in caught.value.message
    assert 2 <= elapsed < 60
    assert gone(pid) and check.running_pids() == []
    # A failed check is not cached: the next request checks again (and fails again).
    with pytest.raises(WorkflowCheckFailed):
        await check.check(path, sha, {})


@pytest_twisted.ensureDeferred
async def test_a_check_past_its_memory_limit_fails_and_says_so(tmp_path):
    check = checker(timeout_seconds=170, max_memory_bytes=64 * MIB)
    path, sha = document(tmp_path, HUGE)
    with pytest.raises(WorkflowCheckFailed) as caught:
        await check.check(path, sha, {})
    assert caught.value.status == 422 and caught.value.code == "workflow_check_failed"
    assert caught.value.details == {"limit": "memory", "limit_bytes": 64 * MIB}
    assert "more memory than the limit of 64 MiB" in caught.value.message


def cwl_alias_bomb(levels: int = 9) -> bytes:
    """A CWL tool whose input default is YAML aliases nested C{levels} deep (10**levels items)."""
    lines = ["cwlVersion: v1.2", "class: CommandLineTool", "baseCommand: echo", "outputs: []",
             "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append(f"inputs:\n  bomb:\n    type: Any\n    default: *a{levels - 1}")
    return ("\n".join(lines) + "\n").encode()


@pytest_twisted.ensureDeferred
async def test_a_cwl_document_is_checked_by_its_engine_within_the_same_limits(tmp_path):
    check = checker(timeout_seconds=60, max_memory_bytes=256 * MIB)
    data = (Path(__file__).parent.parent / "workflows" / "cwl" / "echo.cwl").read_bytes()
    path, sha = document(tmp_path, data)
    checked = await check.check(path, sha, {})
    assert checked.valid, checked.problems
    assert checked.parameters == {"message": {"default": "Hello from KREE", "string": True,
                                              "type": "string", "doc": "What to write."}}
    # A few hundred bytes that expand to a billion items: the memory limit ends the check.
    path, sha = document(tmp_path, cwl_alias_bomb())
    with pytest.raises(WorkflowCheckFailed) as caught:
        await check.check(path, sha, {})
    assert caught.value.details == {"limit": "memory", "limit_bytes": 256 * MIB}
    assert check.running_pids() == []


def test_the_engine_limits_its_own_memory(tmp_path):
    """The first line of the memory limit: validate --max-memory sets RLIMIT_DATA itself."""
    path, _ = document(tmp_path, HUGE)
    result = subprocess.run(
        [sys.executable, "-m", "kree.engine", "validate", str(path), "--policy", "-",
         "--max-memory", str(64 * MIB)], input=b"{}", capture_output=True, timeout=170)
    assert result.returncode == 4, result.stderr
    assert b"ran out of memory (--max-memory 67108864)" in result.stderr
    assert result.stdout == b""


@pytest_twisted.ensureDeferred
async def test_a_checker_killed_by_a_signal_is_a_clear_422(tmp_path):
    check = checker(timeout_seconds=120)
    path, sha = document(tmp_path, HUGE)
    pending = Deferred.fromCoroutine(check.check(path, sha, {}))
    (pid,) = await started(check)
    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    with pytest.raises(WorkflowCheckFailed) as caught:
        await pending
    assert caught.value.status == 422 and caught.value.code == "workflow_check_failed"
    assert caught.value.details == {"signal": signal.SIGKILL}
    assert caught.value.message == "the workflow checker was killed by SIGKILL"


@pytest_twisted.ensureDeferred
async def test_a_cancelled_check_kills_its_process(tmp_path):
    check = checker(timeout_seconds=120, max_concurrent=1)
    path, sha = document(tmp_path, HUGE)
    pending = Deferred.fromCoroutine(check.check(path, sha, {}))
    (pid,) = await started(check)
    assert psutil.Process(pid).is_running() and not gone(pid)
    pending.cancel()  # what the API does when the client goes away
    with pytest.raises(CancelledError):
        await pending
    # The cancellation completes only once the process has been killed and reaped.
    assert not psutil.pid_exists(pid) or gone(pid)
    assert check.running_pids() == []
    # Its slot is free again.
    small, small_sha = document(tmp_path, model(2))
    assert (await check.check(small, small_sha, {})).valid


@pytest_twisted.ensureDeferred
async def test_checks_beyond_the_maximum_are_refused_as_busy(tmp_path):
    check = checker(timeout_seconds=30, max_concurrent=2)
    cached, cached_sha = document(tmp_path, model(2))
    assert (await check.check(cached, cached_sha, {})).valid
    slow, slow_sha = document(tmp_path, HUGE)
    first = Deferred.fromCoroutine(check.check(slow, slow_sha, {}))
    second = Deferred.fromCoroutine(check.check(slow, slow_sha, {"some.Actor": "reject"}))
    pids = await started(check, 2)
    other, other_sha = document(tmp_path, model(4))
    with pytest.raises(CheckerBusy) as caught:
        await check.check(other, other_sha, {})
    assert caught.value.status == 503 and caught.value.code == "busy"
    assert 1 <= caught.value.retry_after_seconds <= 30
    assert caught.value.details == {"retry_after_seconds": caught.value.retry_after_seconds,
                                    "max_concurrent": 2}
    # No process was started for the refused request.
    assert sorted(check.running_pids()) == sorted(pids)
    # A cached answer needs no checker and is given while busy.
    assert (await check.check(cached, cached_sha, {})).valid
    for pending in (first, second):
        pending.cancel()
        with pytest.raises(CancelledError):
            await pending
    assert all(gone(pid) for pid in pids)
    assert (await check.check(other, other_sha, {})).valid


# -- configuration ----------------------------------------------------------------------


def test_validation_settings_and_their_defaults(tmp_path):
    assert load_config(None).validation == ValidationConfig(
        timeout_seconds=10.0, max_memory_bytes=512 * MIB, max_concurrent=2)
    path = tmp_path / "kree.toml"
    path.write_text("[validation]\ntimeout_seconds = 3\nmax_memory_bytes = 1000000\n"
                    "max_concurrent = 5\n")
    assert load_config(path).validation == ValidationConfig(3.0, 1_000_000, 5)
    path.write_text("[validation]\ntimeout_seconds = 0\nmax_memory_bytes = -1\n"
                    "max_concurrent = 0\nretries = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert sorted(caught.value.problems) == sorted([
        "validation.timeout_seconds: must be greater than 0",
        "validation.max_memory_bytes: must not be negative",
        "validation.max_concurrent: must be greater than 0",
        "[validation] unknown key 'retries' (known: timeout_seconds, max_memory_bytes, "
        "max_concurrent)",
    ])


# -- over HTTPS ---------------------------------------------------------------------------


def _validate_children(daemon_pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(daemon_pid).children(recursive=True):
        try:
            if "validate" in child.cmdline():
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_the_api_answers_busy_with_retry_after_and_a_limit_as_422(kree_server):
    """With the defaults (2 checks, 10 s): two slow checks run, a third request is 503."""
    portal = kree_server.client("portal")
    reply = portal.post("/v1/workflows", body=HUGE, headers={"Content-Type": "application/xml"})
    assert reply.status in (200, 201), reply.body
    workflow = reply.json["uri"]
    replies = {}

    def create(name):
        replies[name] = portal.post("/v1/jobs", {"workflow": workflow})

    threads = [threading.Thread(target=create, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(_validate_children(kree_server.process.pid)) < 2:
        assert time.monotonic() < deadline, "the two checks did not start"
        time.sleep(0.02)
    busy = portal.post("/v1/feasibility", {"workflow": workflow})
    assert busy.status == 503 and busy.error == "busy", busy.body
    assert 1 <= int(busy.headers["retry-after"]) <= 10
    busy = portal.post("/v1/jobs", {"workflow": workflow})
    assert busy.status == 503 and busy.error == "busy", busy.body
    assert "retry-after" in busy.headers
    for thread in threads:
        thread.join(120)
    for name in ("a", "b"):
        assert replies[name].status == 422, replies[name].body
        error = replies[name].json["error"]
        assert error["code"] == "workflow_check_failed"
        assert error["details"]["limit"] == "time"
    assert _validate_children(kree_server.process.pid) == []
