"""
Dispatch: QUEUED jobs handed to their backends.

Per backend, QUEUED jobs in order (priority, then time queued) while that
backend's limit (its max_jobs, else [supervisor] max_running, 0 = cores)
and the per-frontend limit ([supervisor] max_running_per_frontend)
allow.  On a backend that runs engines at once (local) a job becomes RUNNING
before its engine starts, so that a pause or stop that arrives meanwhile
finds it; a batch backend keeps it QUEUED, handed over, until the batch
system starts it.  A job FAILS with the reason if its inputs cannot be
staged, its directory cannot be prepared or its engine cannot start (or be
submitted).  A kick while a dispatch runs makes it look again; none happens
before L{Dispatcher.open} (recovery must first adopt the QUEUED jobs a
batch system holds).
"""

from __future__ import annotations

from twisted.logger import Logger

from kree.backends import Backend
from kree.errors import DatabaseUnavailable, InvalidTransition, JobNotFound, KreeError
from kree.jobs import JobService
from kree.records import Job
from kree.states import Action, JobState
from kree.store import Store
from kree.supervisor.background import DATABASE_RETRY_SECONDS, Patience, in_background
from kree.supervisor.preparation import Preparation
from kree.supervisor.tracking import EngineTracker


class Dispatcher:
    log = Logger()

    def __init__(self, store: Store, jobs: JobService, engines: EngineTracker,
                 preparation: Preparation, reactor, *, patience: Patience,
                 limits: dict[str, int], max_per_frontend: int) -> None:
        """
        @param limits: per backend, how many of its jobs may be handed to it at once.
        @param max_per_frontend: how many of one frontend's (0: no limit).
        """
        self._store = store
        self._jobs = jobs
        self._engines = engines
        self._preparation = preparation
        self._reactor = reactor
        self._patience = patience
        self.limits = limits
        self.max_per_frontend = max_per_frontend
        self._open = False
        self._dispatching = False
        self._again = False

    def open(self) -> None:
        """Jobs may be dispatched from now on; the queue is looked at."""
        self._open = True
        self.kick()

    def close(self) -> None:
        """No more jobs are dispatched (kreed stops)."""
        self._open = False

    def kick(self) -> None:
        """Dispatch soon; calls while a dispatch runs make it look again."""
        if not self._open:
            return
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        in_background(self._dispatch())

    def free_slots(self, backend: str) -> int:
        """Jobs that could be handed to C{backend} now."""
        return max(self.limits.get(backend, 0) - self._engines.count(backend), 0)

    async def _dispatch(self) -> None:
        try:
            while True:
                self._again = False
                for name in self._engines.backends:
                    await self._dispatch_to(name)
                if not self._again:
                    break
        except DatabaseUnavailable:
            # The queue is still there: look again when the database may be back.
            self.log.warn("dispatch: the database is unavailable; trying again")
            self._reactor.callLater(DATABASE_RETRY_SECONDS, self.kick)
        finally:
            self._dispatching = False

    async def _dispatch_to(self, name: str) -> None:
        engines = self._engines
        limit = self.limits[name]
        while self._open and engines.count(name) < limit:
            full = engines.full_frontends(self.max_per_frontend)
            free = limit - engines.count(name)
            default = name == engines.default_backend
            # Jobs a batch system holds stay QUEUED while they are pending.
            candidates = await self._store.jobs.next_queued(
                free, full, backend=name, default_backend=default,
                exclude_ids=engines.handed_to(name))
            if not candidates:
                return
            for job in candidates:
                if engines.count(name) >= limit:
                    return
                await self._start_job(job, engines.backends[name])

    async def _start_job(self, job: Job, backend: Backend) -> None:
        """
        Stage, prepare and start a QUEUED job: RUNNING first on a backend that
        runs engines at once, still QUEUED on a batch one (until its
        L{kree.backends.EngineObserver.engine_started}).
        """
        engines = self._engines
        async with engines.lock(job.id):
            if job.id in engines:
                return  # handed to its backend already
            engines.track(job, backend)  # the slot is taken
            try:
                staged = await self._preparation.stage_inputs(job)
            except DatabaseUnavailable:
                engines.untrack(job.id)  # still QUEUED: dispatched again later
                raise
            except KreeError as e:
                engines.untrack(job.id)
                try:
                    await self._jobs.apply(job.id, Action.FAIL, reason=e.message,
                                           updates={"error": e.message})
                except (InvalidTransition, JobNotFound):
                    pass
                return
            try:
                if backend.batch:
                    job = await self._store.jobs.get(job.id)
                    if job.state is not JobState.QUEUED:
                        raise InvalidTransition(job.state, Action.DISPATCH)
                else:
                    job = await self._jobs.apply(job.id, Action.DISPATCH, reason="dispatched",
                                                 updates={"backend": backend.name})
            except (InvalidTransition, JobNotFound):
                engines.untrack(job.id)
                return  # paused, stopped or deleted since it was queued
            except DatabaseUnavailable:
                engines.untrack(job.id)  # the transition did not happen: still QUEUED
                raise
            try:
                await self._preparation.write_job_dir(job, staged)
                ref = await backend.start(job)
                # The engine runs: how to find it again must reach the store.
                await self._patience(self._store.jobs.update_runtime, job.id,
                                     backend=backend.name, backend_ref=ref)
            except Exception as e:
                engines.untrack(job.id)
                reason = (e.message if isinstance(e, KreeError)
                          else f"the engine could not start: {e}")
                if not isinstance(e, KreeError):
                    self.log.failure("job {job_id}: start failed", job_id=job.id)
                try:
                    await self._patience(self._jobs.apply, job.id, Action.FAIL, reason=reason,
                                         updates={"error": reason})
                except (InvalidTransition, JobNotFound):
                    pass
