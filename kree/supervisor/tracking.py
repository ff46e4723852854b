"""
The jobs handed to backends: which backend holds each job's engine (and for
which frontend, for the per-frontend limit), and the lock per job under
which anything is done to its engine, so that a pause, a stop, an answer and
a limit never act on one engine at the same time.

A job is tracked from the moment dispatch takes its slot (or recovery
adopts it) until its backend reports that the engine is gone.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Union

from twisted.internet.defer import DeferredLock

from kree.backends import Backend
from kree.errors import JobNotFound, KreeError
from kree.records import Job
from kree.store import Store
from kree.supervisor.background import Patience

#: What to do to a job's engine: a backend method's name ("pause", "kill",
#: ...) or a coroutine function taking the job.
Operation = Union[str, Callable[[Job], Awaitable[None]]]


class EngineTracker:
    def __init__(self, store: Store, patience: Patience, default_backend: str) -> None:
        self._store = store
        self._patience = patience
        self.default_backend = default_backend
        #: Every enabled backend, by name (see L{add_backends}).
        self.backends: dict[str, Backend] = {}
        self._frontend: dict[str, int] = {}  # job id -> frontend id
        self._backend: dict[str, str] = {}  # job id -> backend name
        self._locks: dict[str, DeferredLock] = {}

    def add_backends(self, backends: dict[str, Backend]) -> None:
        """
        The backends, once built: they are built after the parts that
        observe them, since each is given the observer of its engines.
        """
        self.backends.update(backends)

    def backend_of(self, job: Job) -> Backend:
        """The backend a job runs on (its record's, else the default)."""
        name = job.backend or self.default_backend
        try:
            return self.backends[name]
        except KeyError:
            raise KreeError(f"backend {name!r} is not enabled on this server") from None

    def holder_of(self, job: Job) -> Backend:
        """The backend that holds the job's engine, else the one it runs on."""
        name = self._backend.get(job.id)
        return self.backends[name] if name is not None else self.backend_of(job)

    # -- which jobs ------------------------------------------------------------------

    def track(self, job: Job, backend: Backend) -> None:
        self._frontend[job.id] = job.frontend_id
        self._backend[job.id] = backend.name

    def untrack(self, job_id: str) -> None:
        self._frontend.pop(job_id, None)
        self._backend.pop(job_id, None)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._frontend

    def __len__(self) -> int:
        return len(self._frontend)

    def job_ids(self) -> list[str]:
        return list(self._frontend)

    def backend_name(self, job_id: str) -> str | None:
        return self._backend.get(job_id)

    def handed_to(self, backend: str) -> list[str]:
        """The jobs C{backend} holds (a batch system's pending ones included)."""
        return [job_id for job_id, name in self._backend.items() if name == backend]

    def count(self, backend: str) -> int:
        return len(self.handed_to(backend))

    def full_frontends(self, limit: int) -> list[int]:
        """The frontends with C{limit} jobs handed to backends (none if no limit)."""
        if not limit:
            return []
        counts: dict[int, int] = {}
        for frontend in self._frontend.values():
            counts[frontend] = counts.get(frontend, 0) + 1
        return [frontend for frontend, n in counts.items() if n >= limit]

    # -- acting on engines -------------------------------------------------------------

    def lock(self, job_id: str) -> DeferredLock:
        return self._locks.setdefault(job_id, DeferredLock())

    def forget_lock(self, job_id: str) -> None:
        self._locks.pop(job_id, None)

    async def act(self, job_id: str, operation: Operation) -> None:
        """Carry out C{operation} on a job's engine under the job's lock, if it has one."""
        async with self.lock(job_id):
            if job_id not in self:
                return
            try:
                job = await self._patience(self._store.jobs.get, job_id)
            except JobNotFound:
                return
            if isinstance(operation, str):
                operation = getattr(self.backends[self._backend[job_id]], operation)
            await operation(job)
