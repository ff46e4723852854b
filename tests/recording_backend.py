"""
The one stand-in of the supervisor's unit tests: a backend that starts no
processes.

L{RecordingBackend} implements L{kree.backends.Backend}: it records every
call the supervisor makes of it (C{calls}, as (method, job id) pairs), and
the test says what an engine would have done, through the observer the
supervisor gave it (L{RecordingBackend.report}, L{RecordingBackend.exit}).
Nothing happens on its own: an engine "runs" from C{start} (or an adoption
of one in C{alive_on_adopt}) until the test reports its exit, so a test
driven by Twisted's C{Clock} decides every step.  The real backends keep
their end-to-end tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from kree.backends import Backend, EngineObserver
from kree.backends.proctree import Usage
from kree.records import Job


class RecordingBackend(Backend):
    name = "local"

    def __init__(self, name: str = "local", *, batch: bool = False,
                 samples_together: bool = False) -> None:
        self.name = name
        self.batch = batch
        self.samples_together = samples_together
        #: Set by the test to the supervisor's observer (C{supervisor.engine_events}).
        self.observer: EngineObserver | None = None
        self.calls: list[tuple[str, str | None]] = []
        self.answers: list[tuple[str, int, dict[str, Any]]] = []
        #: Jobs whose engine "runs".
        self.running: set[str] = set()
        #: Jobs whose engine C{adopt} finds still running.
        self.alive_on_adopt: set[str] = set()
        #: What C{usage} answers, by job id (default: nothing used).
        self.usages: dict[str, Usage] = {}
        #: Raised by C{start}, if set.
        self.start_error: Exception | None = None
        #: What C{untracked} answers (a batch system's strays).
        self.strays: dict[str, Any] = {}
        self._consumed: dict[str, int] = {}
        self._exit_waiters: dict[str, list[Deferred]] = {}

    def called(self, method: str) -> list[str | None]:
        """The job ids C{method} was called for, in order."""
        return [job_id for name, job_id in self.calls if name == method]

    # -- what the test reports ----------------------------------------------------------

    def report(self, job_id: str, *lines: dict[str, Any]) -> Deferred:
        """The engine wrote C{lines} to its events file."""
        consumed = self._consumed.get(job_id, 0) + len(lines)
        self._consumed[job_id] = consumed
        return Deferred.fromCoroutine(
            self.observer.engine_events(job_id, list(lines), consumed))

    def exit(self, job_id: str, *, ended: bool, adopted: bool = False,
             reason: str | None = None) -> Deferred:
        """The engine is gone (C{ended}: it wrote its end event first)."""
        self.running.discard(job_id)
        for waiter in self._exit_waiters.pop(job_id, []):
            waiter.callback(None)
        return Deferred.fromCoroutine(
            self.observer.engine_exited(job_id, ended=ended, adopted=adopted, reason=reason))

    # -- the backend interface -------------------------------------------------------------

    async def start(self, job: Job) -> dict[str, Any]:
        self.calls.append(("start", job.id))
        if self.start_error is not None:
            raise self.start_error
        self.running.add(job.id)
        self._consumed[job.id] = job.events_consumed
        return {"recorded": job.id}

    async def adopt(self, job: Job) -> bool:
        self.calls.append(("adopt", job.id))
        self._consumed[job.id] = job.events_consumed
        alive = job.id in self.alive_on_adopt
        if alive:
            self.running.add(job.id)
        return alive

    async def pause(self, job: Job) -> None:
        self.calls.append(("pause", job.id))

    async def resume(self, job: Job) -> None:
        self.calls.append(("resume", job.id))

    async def terminate(self, job: Job) -> None:
        self.calls.append(("terminate", job.id))

    async def kill(self, job: Job) -> None:
        self.calls.append(("kill", job.id))

    async def answer(self, job: Job, n: int, answer: dict[str, Any]) -> None:
        self.calls.append(("answer", job.id))
        self.answers.append((job.id, n, answer))

    async def usage(self, job: Job) -> Usage:
        self.calls.append(("usage", job.id))
        return self.usages.get(job.id, Usage(cpu_seconds=0.0, rss_bytes=0, processes=1))

    async def wait_exited(self, job_id: str) -> None:
        if job_id in self.running:
            waiter: Deferred = Deferred()
            self._exit_waiters.setdefault(job_id, []).append(waiter)
            await waiter

    async def detach(self) -> None:
        self.calls.append(("detach", None))

    def untracked(self) -> dict[str, Any]:
        return dict(self.strays)
