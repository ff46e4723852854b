"""
The supervisor: turns QUEUED jobs into running engines, and keeps watch.

It is made of parts, one job each, which L{Supervisor} wires together:

- L{kree.supervisor.tracking}: the jobs handed to backends, one lock each;
- L{kree.supervisor.dispatch}: QUEUED jobs to their backends, within limits;
- L{kree.supervisor.preparation}: inputs staged, the job directory written;
- L{kree.supervisor.actions}: pause, resume, stop and kill carried out on
  engines (an observer of the job service);
- L{kree.supervisor.engine_events}: what engines report, applied through
  the job service (the backends' L{kree.backends.EngineObserver});
- L{kree.supervisor.monitoring}: usage, limits, input timeouts, stop then kill;
- L{kree.supervisor.recovery}: engines found again after a restart.

Each job runs on the backend its record names (chosen at creation:
resources.backend, else [supervisor] default_backend): the enabled
backends, built by L{kree.backends.registry.build_backends}, each holding
at most its C{max_jobs} (else [supervisor] max_running) at once.  For the job service, the
supervisor is its L{kree.jobs.Engines}: it releases a deleted job's engine
and delivers answers.  Shutdown: engines keep running and are re-adopted
next time, unless kreed runs with --stop-jobs-on-exit.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kree.backends import Backend
from kree.backends.registry import build_backends
from kree.config import Config
from kree.errors import KreeError
from kree.jobs import JobService, WorkflowSource
from kree.records import Job
from kree.sandbox import Sandbox
from kree.states import Action
from kree.store import Store
from kree.supervisor.actions import Actions
from kree.supervisor.background import InThread, Patience, reactor_threads
from kree.supervisor.dispatch import Dispatcher
from kree.supervisor.engine_events import EngineEvents
from kree.supervisor.monitoring import Monitor
from kree.supervisor.preparation import Preparation
from kree.supervisor.recovery import Recovery
from kree.supervisor.tracking import EngineTracker

__all__ = ["Supervisor"]


class Supervisor(Service):
    log = Logger()

    def __init__(self, config: Config, store: Store, jobs: JobService, reactor, *,
                 fetcher: WorkflowSource, backends: dict[str, Backend] | None = None,
                 stop_jobs_on_exit: bool = False, in_thread: InThread | None = None,
                 sandbox: Sandbox | None = None) -> None:
        """
        @param fetcher: fetches inputs and keeps fetched workflows.
        @param backends: instead of those the configuration names (tests);
            their observer is L{engine_events}.
        @param in_thread: runs blocking file work (default: the reactor's threads).
        """
        self._store = store
        self._jobs = jobs
        self._stop_jobs_on_exit = stop_jobs_on_exit
        settings = config.supervisor
        self.max_running = settings.max_running or os.cpu_count() or 1
        in_thread = in_thread or reactor_threads(reactor)
        patience = Patience(reactor, lambda: self.running)
        self.engines = EngineTracker(store, patience, settings.default_backend)
        self.monitor = Monitor(store, jobs, self.engines, reactor,
                               grace=settings.stop_grace_seconds,
                               default_walltime=settings.default_walltime_seconds,
                               interval=settings.monitor_interval_seconds)
        self.engine_events = EngineEvents(store, jobs, self.engines, self.monitor,
                                          slot_freed=self.kick, in_thread=in_thread,
                                          patience=patience)
        if backends is None:
            backends = build_backends(config, reactor, self.engine_events, sandbox)
        # How many of a backend's jobs may be handed to it at once.
        limits = {name: self.max_running if backend.max_jobs is None else backend.max_jobs
                  for name, backend in backends.items()}
        self.engines.add_backends(backends)
        self.dispatcher = Dispatcher(
            store, jobs, self.engines,
            Preparation(store, jobs, fetcher, in_thread=in_thread, patience=patience),
            reactor, patience=patience, limits=limits,
            max_per_frontend=settings.max_running_per_frontend)
        self.actions = Actions(self.engines, self.monitor, self.kick)
        self.recovery = Recovery(store, jobs, self.engines, self.monitor, patience=patience)

    @property
    def backends(self) -> dict[str, Backend]:
        return self.engines.backends

    @property
    def limits(self) -> dict[str, int]:
        return self.dispatcher.limits

    @property
    def running_count(self) -> int:
        return len(self.engines)

    def kick(self) -> None:
        """Dispatch soon (a job was queued, or a slot freed)."""
        self.dispatcher.kick()

    def free_slots(self, backend: str) -> int:
        """Jobs that could be handed to C{backend} now."""
        return self.dispatcher.free_slots(backend)

    # -- service ------------------------------------------------------------------

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self._jobs.add_observer(self.actions.observe)
        for backend in self.backends.values():
            await backend.start_service()
        await self.recovery.recover()
        await self.recovery.cancel_strays()
        self.monitor.start()
        self.dispatcher.open()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._jobs.remove_observer(self.actions.observe)
        self.dispatcher.close()
        self.monitor.stop()
        if self._stop_jobs_on_exit:
            for job_id in self.engines.job_ids():
                try:
                    await self._jobs.apply(job_id, Action.STOP, reason="daemon shutdown")
                    job = await self._store.jobs.get(job_id)
                    await self.monitor.terminate_then_kill(job)
                except KreeError:
                    pass
            for job_id in self.engines.job_ids():
                name = self.engines.backend_name(job_id)
                if name is not None:
                    await self.backends[name].wait_exited(job_id)
        for backend in self.backends.values():
            await backend.detach()

    # -- the job service's engines (kree.jobs.Engines) -------------------------------

    async def release(self, job: Job) -> None:
        """
        Before a job's directory is removed (its record may be gone already):
        its engine must be gone.
        """
        name = self.engines.backend_name(job.id)
        if name is not None:
            async with self.engines.lock(job.id):
                if job.id in self.engines:
                    await self.backends[name].kill(job)
            await self.backends[name].wait_exited(job.id)

    async def answer(self, job: Job, n: int, answers: dict[str, Any], *,
                     frontend_id: int | None) -> Job:
        """Deliver an answer to the waiting engine; the job is RUNNING again."""
        async with self.engines.lock(job.id):
            job = await self._jobs.apply(job.id, Action.ANSWER, reason="answered",
                                         frontend_id=frontend_id)
            self.monitor.cancel_input_timer(job.id)
            await self.engines.backend_of(job).answer(job, n, answers)
            return job

    async def backend_status(self) -> list[dict[str, Any]]:
        """Per backend: its name, jobs handed to it, its limit, and what it says."""
        out = []
        for name, backend in self.backends.items():
            entry: dict[str, Any] = {"name": name, "jobs": self.engines.count(name),
                                     "limit": self.limits[name]}
            entry.update(await backend.status())
            out.append(entry)
        return out
