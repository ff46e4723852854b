"""
Watching running jobs, and the timers that end them.

- Every monitor interval, the CPU seconds and peak memory of each job handed
  to a backend.  A backend that samples together (the local one: one scan of
  /proc) is asked once per round for all its jobs, whose records are read in
  one transaction and written in another; any other backend's jobs are
  sampled one by one.
- Limits: a job past its walltime (its own, else [supervisor]
  default_walltime_seconds) is stopped and FAILS ("walltime"); one over its
  memory is killed and FAILS ("memory").  The FAILED state is committed
  first, then the engine is acted on (recovery ends the engine should kreed
  stop in between).
- Input timeout: a WAITING job whose resources name an input_timeout FAILS
  ("input timeout") when no answer came in time, and its engine is killed.
- Stop: SIGTERM (the backend's terminate), then kill once
  [supervisor] stop_grace_seconds have passed and the engine still runs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kree.errors import InvalidTransition, JobNotFound
from kree.jobs import JobService
from kree.records import Job
from kree.states import Action
from kree.store import Store
from kree.supervisor.background import in_background
from kree.supervisor.tracking import EngineTracker, Operation


class Monitor:
    log = Logger()

    def __init__(self, store: Store, jobs: JobService, engines: EngineTracker, reactor, *,
                 grace: float, default_walltime: float, interval: float) -> None:
        self._store = store
        self._jobs = jobs
        self._engines = engines
        self._reactor = reactor
        self.grace = grace
        # A job that names no walltime is held to this one (no run without an
        # end); it is not written into the job's resources, so a batch
        # system applies its own partition default rather than this number.
        self.default_walltime = default_walltime
        self._interval = interval
        self._peak: dict[str, int] = {}
        self._input_timers: dict[str, Any] = {}
        self._kill_timers: dict[str, Any] = {}
        self._loop = LoopingCall(self.sample)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        """No more sampling; pending timers are cancelled (engines outlive kreed)."""
        if self._loop.running:
            self._loop.stop()
        for timer in [*self._input_timers.values(), *self._kill_timers.values()]:
            if timer.active():
                timer.cancel()

    def forget(self, job_id: str) -> None:
        """The job's engine is gone: its peak and its timers go too."""
        self._peak.pop(job_id, None)
        self.cancel_input_timer(job_id)
        timer = self._kill_timers.pop(job_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    # -- stop: terminate, then kill after the grace period --------------------------------

    async def terminate_then_kill(self, job: Job) -> None:
        backend = self._engines.holder_of(job)
        await backend.terminate(job)

        def kill() -> None:
            self._kill_timers.pop(job.id, None)
            if job.id in self._engines:
                self.log.warn("job {job_id}: engine still running {grace} s after SIGTERM; "
                              "killing it", job_id=job.id, grace=self.grace)
                in_background(backend.kill(job))

        self._kill_timers[job.id] = self._reactor.callLater(self.grace, kill)

    # -- input timeouts ----------------------------------------------------------------------

    async def arm_input_timer(self, job_id: str) -> None:
        job = await self._store.jobs.get(job_id)
        timeout = job.resources.get("input_timeout")
        if not timeout:
            return
        self.cancel_input_timer(job_id)

        def expired() -> None:
            self._input_timers.pop(job_id, None)
            in_background(self._input_timed_out(job_id))

        self._input_timers[job_id] = self._reactor.callLater(timeout, expired)

    def cancel_input_timer(self, job_id: str) -> None:
        timer = self._input_timers.pop(job_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    async def _input_timed_out(self, job_id: str) -> None:
        try:
            job = await self._jobs.apply(job_id, Action.FAIL, reason="input timeout",
                                         updates={"error": "input timeout"})
        except (InvalidTransition, JobNotFound):
            return
        await self._engines.act(job.id, "kill")

    # -- sampling and limits -------------------------------------------------------------------

    async def sample(self) -> None:
        """One round: every handed job's usage recorded, and its limits checked."""
        store = self._store.jobs
        backends = self._engines.backends

        def read_thd(conn, job_ids: list[str]) -> list[Job]:
            found = []
            for job_id in job_ids:
                try:
                    found.append(store.get_thd(conn, job_id))
                except JobNotFound:
                    pass
            return found

        def write_thd(conn, values: dict[str, dict[str, Any]]) -> None:
            store.lock_many_thd(conn, values)  # in id order, as every multi-job write
            for job_id, fields in values.items():
                store.update_runtime_thd(conn, job_id, **fields)

        async def one_by_one(job_ids) -> None:
            for job_id in job_ids:
                try:
                    await self._sample_job(job_id)
                except JobNotFound:
                    pass
                except Exception:
                    self.log.failure("monitoring job {job_id} failed", job_id=job_id)

        batched: dict[str, list[str]] = {}
        single = []
        for job_id in self._engines.job_ids():
            name = self._engines.backend_name(job_id)
            if name in backends and backends[name].samples_together:
                batched.setdefault(name, []).append(job_id)
            else:
                single.append(job_id)
        await one_by_one(single)
        for name, job_ids in batched.items():
            try:
                jobs = await self._store.pool.run(read_thd, job_ids)
            except Exception:
                # A record that cannot be read: one by one, so that only it fails.
                await one_by_one(job_ids)
                continue
            jobs = [job for job in jobs if not job.state.terminal]
            if not jobs:
                continue
            try:
                usages = await backends[name].usage_many(jobs)
                values = {}
                for job in jobs:
                    usage = usages[job.id]
                    peak = max(self._peak.get(job.id, 0), usage.rss_bytes,
                               job.peak_memory_bytes or 0)
                    if job.id in self._engines:  # not ended meanwhile
                        self._peak[job.id] = peak
                    values[job.id] = {"cpu_seconds": round(usage.cpu_seconds, 3),
                                      "peak_memory_bytes": peak}
                await self._store.pool.run(write_thd, values)
            except Exception:
                self.log.failure("monitoring the jobs of backend {backend} failed",
                                 backend=name)
                continue
            for job in jobs:
                try:
                    await self._check_limits(job, usages[job.id])
                except JobNotFound:
                    pass
                except Exception:
                    self.log.failure("monitoring job {job_id} failed", job_id=job.id)

    async def _sample_job(self, job_id: str) -> None:
        job = await self._store.jobs.get(job_id)
        if job.state.terminal:
            return
        usage = await self._engines.backends[self._engines.backend_name(job_id)].usage(job)
        peak = max(self._peak.get(job_id, 0), usage.rss_bytes, job.peak_memory_bytes or 0)
        self._peak[job_id] = peak
        await self._store.jobs.update_runtime(job_id, cpu_seconds=round(usage.cpu_seconds, 3),
                                              peak_memory_bytes=peak)
        await self._check_limits(job, usage)

    async def _check_limits(self, job: Job, usage) -> None:
        walltime = job.resources.get("walltime") or self.default_walltime
        memory = job.resources.get("memory")
        if walltime and job.running_time(self._jobs.now()) > walltime:
            await self._limit(job, "walltime", self.terminate_then_kill)
        elif memory and usage.rss_bytes > memory:
            await self._limit(job, "memory", "kill")

    async def _limit(self, job: Job, reason: str, operation: Operation) -> None:
        try:
            await self._jobs.apply(job.id, Action.FAIL, reason=reason, updates={"error": reason})
        except InvalidTransition:
            return
        self.log.info("job {job_id} exceeded its {limit}", job_id=job.id, limit=reason)
        await self._engines.act(job.id, operation)
