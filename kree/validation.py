"""
Checking a workflow before a job is created: the `validate` of the engine
of its kind (kree.engines.kind_of: kree.engine for MoML, kree.cwl for CWL), run as
a subprocess (the daemon never loads actor packages itself), with the admin's
actor policy.  The answer (valid or the engine's problems, and every settable
parameter with its default) is cached per document and policy, so only the
first job of a workflow version pays for the subprocess.

A check is bounded by the C{[validation]} settings, because a document can
make the engine's work arbitrarily large (C{Repeat.numberOfTimes =
2000000000}, a catastrophic regular expression):

  - wall clock: at C{timeout_seconds} the checker's process group is killed
    (SIGKILL); the request gets 422 C{workflow_check_failed} with
    C{details.limit = "time"};
  - memory: the engine limits its own data segment to C{max_memory_bytes}
    first thing (C{validate --max-memory}) and exits 4 beyond it, and the
    daemon also watches the checker's resident size; either way 422
    C{workflow_check_failed} with C{details.limit = "memory"};
  - concurrency: at most C{max_concurrent} checks run at once; another
    request that needs one gets 503 C{busy} with Retry-After (the seconds
    until the soonest running check reaches its deadline).  Cached answers
    need no check and are never refused;
  - a check whose caller goes away (its Deferred cancelled, as when the HTTP
    client disconnects) kills its process; the cancellation completes once
    the process is gone.

A checker killed by a signal that is not ours (the kernel's OOM killer, an
operator) is 422 C{workflow_check_failed} with C{details.signal}.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import attrs
import psutil
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kree.config import ValidationConfig
from kree.engine.cli import EXIT_OUT_OF_MEMORY
from kree.engines import kind_of_file
from kree.errors import KreeError

CACHE_SIZE = 256
# Seconds between samples of a running checker's resident memory (the second
# line behind the engine's own RLIMIT_DATA).
MEMORY_SAMPLE_SECONDS = 0.25
# The end of the checker's stderr kept for an error message.
STDERR_TAIL_BYTES = 4096

MIB = 1024 * 1024


#: What the engine reports of each parameter: its default text, whether it is
#: a string, and for one of an actor, the actor's class, the attribute's name
#: and whether it holds code (kree.jobs.ParameterLocks); for a CWL input, its
#: type and doc.
PARAMETER_FIELDS = ("default", "string", "actor_class", "attribute", "code", "type", "doc")


class InvalidWorkflow(KreeError):
    status = 422
    code = "invalid_workflow"


class WorkflowCheckFailed(KreeError):
    """
    The check of a workflow did not finish: it hit a limit (C{details.limit}
    is C{"time"} or C{"memory"}) or was killed by a signal (C{details.signal}).
    """

    status = 422
    code = "workflow_check_failed"


class CheckerBusy(KreeError):
    """As many checks as allowed are running; try again after C{retry_after_seconds}."""

    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after_seconds: int, **details: Any) -> None:
        super().__init__(message, retry_after_seconds=retry_after_seconds, **details)
        # The API layer answers this as a Retry-After header.
        self.retry_after_seconds = retry_after_seconds


@attrs.frozen
class Checked:
    valid: bool
    problems: list[str]
    messages: list[dict[str, Any]]
    parameters: dict[str, dict[str, Any]]  # full name -> {"default", "string"}


class _CheckProcess(protocol.ProcessProtocol):
    """One `validate` subprocess: its policy on stdin, its report on stdout."""

    def __init__(self, stdin: bytes) -> None:
        self._stdin = stdin
        self._out: list[bytes] = []
        self._err = b""
        self._waiters: list[Deferred] = []
        self.pid: int | None = None
        # Set at the end: the exit code, or the signal that ended it.
        self.ended = False
        self.exit_code: int | None = None
        self.signal: int | None = None
        # "time" or "memory" once we have killed it for a limit.
        self.limit_hit: str | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err = (self._err + data)[-STDERR_TAIL_BYTES:]

    def processEnded(self, reason) -> None:
        self.ended = True
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def out(self) -> bytes:
        return b"".join(self._out)

    @property
    def err(self) -> str:
        return self._err.decode(errors="replace")

    def when_ended(self) -> Deferred:
        """A new Deferred that fires once the process has ended (at once if it has)."""
        waiter: Deferred = Deferred()
        if self.ended:
            waiter.callback(None)
        else:
            self._waiters.append(waiter)
        return waiter

    def kill(self) -> None:
        """SIGKILL to its process group (it made one with --new-session), and to it."""
        if self.ended or self.pid is None:
            return  # reaped: the pid may already be someone else's
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass  # not its own group leader yet
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass


@attrs.define(eq=False)
class _Running:
    deadline: float
    process: _CheckProcess


class WorkflowChecker:
    log = Logger()

    def __init__(self, reactor, *, python: str = sys.executable,
                 limits: ValidationConfig = ValidationConfig()) -> None:
        self._reactor = reactor
        self._python = python
        self._limits = limits
        self._cache: OrderedDict[tuple[str, str], Checked] = OrderedDict()
        self._running: set[_Running] = set()

    def running_pids(self) -> list[int]:
        """The process ids of the checks running now."""
        return [r.process.pid for r in self._running if r.process.pid is not None]

    async def check(self, path: Path, sha256: str, policy: dict[str, str]) -> Checked:
        """
        The engine's verdict on the document at C{path}.

        @raise WorkflowCheckFailed: the check hit a limit or was killed.
        @raise CheckerBusy: C{max_concurrent} checks are running already.
        @raise InvalidWorkflow: the engine gave no report.
        """
        policy_key = hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()
        key = (sha256, policy_key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        limits = self._limits
        if len(self._running) >= limits.max_concurrent:
            now = self._reactor.seconds()
            soonest = min(r.deadline for r in self._running) - now
            retry_after = max(1, math.ceil(soonest))
            raise CheckerBusy(
                f"{limits.max_concurrent} workflow checks are running already; "
                f"try again in {retry_after} s",
                retry_after, max_concurrent=limits.max_concurrent)
        process = _CheckProcess(json.dumps(policy).encode())
        running = _Running(self._reactor.seconds() + limits.timeout_seconds, process)
        self._running.add(running)
        try:
            await self._run(path, process)
        finally:
            self._running.discard(running)
        checked = self._verdict(process)
        self._cache[key] = checked
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return checked

    async def _run(self, path: Path, process: _CheckProcess) -> None:
        limits = self._limits
        kind = await deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                       kind_of_file, path)
        args = kind.validate_command(path, max_memory_bytes=limits.max_memory_bytes,
                                     python=self._python)
        self._reactor.spawnProcess(process, self._python, args, env=dict(os.environ))

        def hit(limit: str) -> None:
            if not process.ended and process.limit_hit is None:
                process.limit_hit = limit
                process.kill()

        def sample_memory() -> None:
            if process.ended or process.pid is None:
                return
            try:
                rss = psutil.Process(process.pid).memory_info().rss
            except psutil.Error:
                return  # ending
            if rss > limits.max_memory_bytes:
                hit("memory")

        timer = self._reactor.callLater(limits.timeout_seconds, hit, "time")
        sampler = LoopingCall(sample_memory)
        sampler.clock = self._reactor
        sampler.start(MEMORY_SAMPLE_SECONDS, now=False)
        try:
            await process.when_ended()
        except CancelledError:
            # The caller went away: nobody wants this answer any more.
            process.kill()
            await process.when_ended()
            raise
        finally:
            if timer.active():
                timer.cancel()
            if sampler.running:
                sampler.stop()

    def _verdict(self, process: _CheckProcess) -> Checked:
        limits = self._limits
        if process.limit_hit == "time":
            raise WorkflowCheckFailed(
                f"checking the workflow took longer than the limit of "
                f"{limits.timeout_seconds:g} s", limit="time",
                limit_seconds=limits.timeout_seconds)
        if process.limit_hit == "memory" or process.exit_code == EXIT_OUT_OF_MEMORY:
            raise WorkflowCheckFailed(
                f"checking the workflow needed more memory than the limit of "
                f"{limits.max_memory_bytes / MIB:g} MiB", limit="memory",
                limit_bytes=limits.max_memory_bytes)
        if process.signal is not None:
            name = _signal_name(process.signal)
            self.log.warn("a workflow checker was killed by {signal}", signal=name)
            raise WorkflowCheckFailed(
                f"the workflow checker was killed by {name}", signal=process.signal)
        try:
            report = json.loads(process.out)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            raise InvalidWorkflow(f"the engine could not check the workflow "
                                  f"(exit {process.exit_code}): {process.err[-500:]}")
        return Checked(
            valid=bool(report.get("valid")),
            problems=list(report.get("problems", [])),
            messages=list(report.get("messages", [])),
            parameters={row["name"]: {key: row[key] for key in PARAMETER_FIELDS if key in row}
                        for row in report.get("parameters", [])},
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
