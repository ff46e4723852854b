"""
Execution backends: where engines run.

The supervisor drives every backend through L{Backend}: start an engine for a
prepared job directory, pause, resume, terminate (graceful: SIGTERM, the
engine finishes its firing and exits), kill (forcible, the whole process
tree), deliver an answer to a waiting engine, report usage, and adopt an
engine again after a daemon restart.  A backend reports what the engine does
through L{EngineObserver}: the lines of JOBDIR/events.jsonl in order, with
the count consumed so far, and the engine's exit.

kree.backends.local runs engines as processes on this machine; a batch
system (kree.backends.slurm) implements the same interface.  A backend whose
C{batch} attribute is true holds jobs pending: the job stays QUEUED after
C{start} until the backend reports L{EngineObserver.engine_started}, and a
restart adopts its QUEUED jobs too.  A backend may also offer
C{start_service()} (awaited before jobs are adopted) and C{status()} (what
C{kree-admin status} shows of it).
"""

from __future__ import annotations

from typing import Any, Protocol

from kree.records import Job


class EngineObserver(Protocol):
    async def engine_events(self, job_id: str, lines: list[dict[str, Any]],
                            consumed: int) -> None:
        """New lines of the job's events.jsonl; C{consumed} counts all applied so far."""

    async def engine_started(self, job_id: str, detail: str) -> None:
        """A batch backend's job has started (QUEUED becomes RUNNING)."""

    async def engine_note(self, job_id: str, text: str) -> None:
        """A note for the job's messages (why the batch system keeps it pending)."""

    async def engine_paused(self, job_id: str, reason: str) -> None:
        """The batch system suspended the job itself (an admin's scontrol suspend)."""

    async def engine_resumed(self, job_id: str, reason: str) -> None:
        """The batch system resumed a suspended job itself."""

    async def engine_exited(self, job_id: str, *, ended: bool, adopted: bool,
                            reason: str | None = None) -> None:
        """
        The engine is gone; C{ended}: it wrote its end event before going;
        C{reason}: why the job failed, when the backend knows (a time limit).
        """


class Backend(Protocol):
    name: str
    batch: bool

    async def start(self, job: Job) -> dict[str, Any]:
        """Start the engine of a prepared job; what the store keeps to find it again."""

    async def adopt(self, job: Job) -> bool:
        """
        Follow the engine of a job again after a restart, from line
        job.events_consumed of its events file.  False if the engine is gone;
        the backend still reports the lines it left and its exit.
        """

    async def pause(self, job: Job) -> None: ...

    async def resume(self, job: Job) -> None: ...

    async def terminate(self, job: Job) -> None: ...

    async def kill(self, job: Job) -> None: ...

    async def answer(self, job: Job, n: int, answer: dict[str, Any]) -> None: ...

    async def usage(self, job: Job): ...

    async def detach(self) -> None:
        """Stop following every engine and leave it running (daemon shutdown)."""
