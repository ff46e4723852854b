"""
The supervisor: turns QUEUED jobs into running engines, and keeps watch.

- Backends: each job runs on the backend its record names (chosen at
  creation: resources.backend, else [supervisor] default_backend):
  kree.backends.local, and kree.backends.slurm when [slurm] enabled.
- Dispatch: per backend, QUEUED jobs in order (priority, then time queued)
  while that backend's limit (local: [supervisor] max_running, 0 = cores;
  slurm: [slurm] max_jobs) and the per-frontend limit allow.  On the local
  backend a job becomes RUNNING before its engine starts (so a pause or stop
  that arrives meanwhile finds it); a batch backend keeps it QUEUED, handed
  over, until the batch system starts it.  A job FAILS with the reason if its
  directory cannot be prepared or its engine cannot start (or be submitted).
- Actions: it observes the job service.  A pause, resume, stop or kill that a
  frontend or an admin applied is carried out on the engine's process tree
  (SIGSTOP, SIGCONT, SIGTERM then SIGKILL after the grace period, SIGKILL).
- Engine events (through the backend) become messages, progress, prompts,
  products and the final state, via the job service.
- Watch: every monitor interval, the CPU seconds and peak memory of each
  running tree; a job past its walltime is stopped (FAILED, reason
  "walltime"), one over its memory is killed (FAILED, reason "memory"); a
  WAITING job past its input_timeout FAILS ("input timeout").
- Restart: on start it re-adopts the engines of RUNNING, WAITING and PAUSED
  jobs (never a recycled pid), and the QUEUED jobs a batch system holds,
  replays the events they wrote meanwhile, and
  fails those whose engine vanished without an end event ("lost during daemon
  restart").  A record that cannot be understood is quarantined.
- Shutdown: engines keep running and are re-adopted next time, unless
  kreed runs with --stop-jobs-on-exit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kree import jobdir
from kree.errors import DatabaseUnavailable, InvalidTransition, JobNotFound, KreeError
from kree.records import Event, Job
from kree.states import Action, JobState

LOST = "lost during daemon restart"
# Seconds between tries of a store call while the database is away.
DATABASE_RETRY_SECONDS = 1.0
VANISHED = "the engine exited without reporting its end (killed?)"
DISK_FULL = "no space left on the file system of the job directory"
# Below this much free space, an engine that vanished is taken to have died of it.
DISK_FULL_BYTES = 256 * 1024


def _disk_full(job_dir: Path) -> bool:
    try:
        return shutil.disk_usage(job_dir).free < DISK_FULL_BYTES
    except OSError:
        return False


class Supervisor(Service):
    log = Logger()

    def __init__(self, config, store, jobs, reactor, *, fetcher, uploader=None,
                 backends: dict[str, Any] | None = None,
                 stop_jobs_on_exit: bool = False) -> None:
        self._fetcher = fetcher
        self._uploader = uploader
        self._config = config
        self._store = store
        self._jobs = jobs
        self._reactor = reactor
        self._stop_jobs_on_exit = stop_jobs_on_exit
        settings = config.supervisor
        self.max_running = settings.max_running or os.cpu_count() or 1
        self.max_per_frontend = settings.max_running_per_frontend
        # A job that names no walltime is held to this one (no run without an
        # end); it is not written into the job's resources, so a batch
        # system applies its own partition default rather than this number.
        self.default_walltime = settings.default_walltime_seconds
        self.grace = settings.stop_grace_seconds
        self.default_backend = settings.default_backend
        if backends is None:
            backends = self._make_backends(config, reactor)
        self.backends = backends
        # How many of a backend's jobs may be handed to it at once.
        self.limits = {name: self.max_running for name in backends}
        if "slurm" in backends:
            self.limits["slurm"] = config.slurm.max_jobs
        self._locks: dict[str, DeferredLock] = {}
        self._running_frontend: dict[str, int] = {}  # job id -> frontend id
        self._running_backend: dict[str, str] = {}  # job id -> backend name
        self._peak: dict[str, int] = {}
        self._input_timers: dict[str, Any] = {}
        self._kill_timers: dict[str, Any] = {}
        self._dispatching = False
        self._dispatch_again = False
        self._recovering = True
        # Engine events waiting for the next group commit (engine_events).
        self._event_batches: list[tuple[str, list, int, Deferred]] = []
        self._applying_events = False
        self._monitor = LoopingCall(self._sample)
        self._monitor.clock = reactor

    def _make_backends(self, config, reactor) -> dict[str, Any]:
        from kree.backends.local import LocalBackend

        backends: dict[str, Any] = {"local": LocalBackend(reactor, self)}
        if config.slurm.enabled:
            from kree.backends.slurm import SlurmBackend

            backends["slurm"] = SlurmBackend(reactor, self, config.slurm)
        return backends

    def backend_of(self, job: Job):
        """The backend a job runs on (its record's, else the default)."""
        name = job.backend or self.default_backend
        try:
            return self.backends[name]
        except KeyError:
            raise KreeError(f"backend {name!r} is not enabled on this server") from None

    def _track(self, job: Job, backend) -> None:
        self._running_frontend[job.id] = job.frontend_id
        self._running_backend[job.id] = backend.name

    def _untrack(self, job_id: str) -> None:
        self._running_frontend.pop(job_id, None)
        self._running_backend.pop(job_id, None)

    # -- service ------------------------------------------------------------------

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self._jobs.add_observer(self._observe)
        for backend in self.backends.values():
            await backend.start_service()
        try:
            await self._recover()
            await self._cancel_strays()
        finally:
            self._recovering = False
        self._monitor.start(self._config.supervisor.monitor_interval_seconds, now=False)
        self.kick()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._jobs.remove_observer(self._observe)
        if self._monitor.running:
            self._monitor.stop()
        for timer in [*self._input_timers.values(), *self._kill_timers.values()]:
            if timer.active():
                timer.cancel()
        if self._stop_jobs_on_exit:
            for job_id in list(self._running_frontend):
                try:
                    await self._jobs.apply(job_id, Action.STOP, reason="daemon shutdown")
                    job = await self._store.jobs.get(job_id)
                    await self._terminate_then_kill(job)
                except KreeError:
                    pass
            for job_id, name in list(self._running_backend.items()):
                await self.backends[name].wait_exited(job_id)
        for backend in self.backends.values():
            await backend.detach()

    def _lock(self, job_id: str) -> DeferredLock:
        return self._locks.setdefault(job_id, DeferredLock())

    async def _patiently(self, call, *args, **kwargs):
        """
        A store call that must not be lost to a database outage (the engine's
        events, what the backend needs to find an engine again): tried again
        every DATABASE_RETRY_SECONDS while the supervisor runs.
        """
        told = False
        while True:
            try:
                return await call(*args, **kwargs)
            except DatabaseUnavailable:
                if not self.running:
                    raise
                if not told:
                    self.log.warn("supervisor: the database is unavailable; trying again")
                    told = True
                await deferLater(self._reactor, DATABASE_RETRY_SECONDS)

    def _in_background(self, coroutine) -> None:
        def failed(failure):
            self.log.failure("supervisor task failed", failure=failure)

        Deferred.fromCoroutine(coroutine).addErrback(failed)

    # -- reacting to state changes -----------------------------------------------

    def _observe(self, event: Event) -> None:
        if event.type != "job.state":
            return
        data = event.data
        action, new = data.get("action"), data.get("to")
        job_id = event.job_id
        if new == JobState.QUEUED.value:
            self.kick()
        if new == JobState.FINISHED.value and self._uploader is not None:
            self._in_background(self._upload_products(job_id))
        if job_id not in self._running_frontend:
            return
        if action == Action.PAUSE.value:
            self._cancel_input_timer(job_id)
            self._in_background(self._act(job_id, "pause"))
        elif action == Action.RESUME.value:
            self._in_background(self._act(job_id, "resume"))
            if new == JobState.WAITING.value:
                self._in_background(self._arm_input_timer(job_id))
        elif action == Action.ASK_INPUT.value and new == JobState.WAITING.value:
            self._in_background(self._arm_input_timer(job_id))
        elif action == Action.STOP.value:
            self._in_background(self._act(job_id, self._terminate_then_kill))
        elif action == Action.KILL.value:
            self._in_background(self._act(job_id, "kill"))

    async def _act(self, job_id: str, operation) -> None:
        """
        Carry out C{operation} on a job's engine under the job's lock: a
        backend method's name ("pause", "kill", ...) or a coroutine function
        taking the job.
        """
        async with self._lock(job_id):
            if job_id not in self._running_frontend:
                return
            try:
                job = await self._patiently(self._store.jobs.get, job_id)
            except JobNotFound:
                return
            if isinstance(operation, str):
                operation = getattr(self.backends[self._running_backend[job_id]], operation)
            await operation(job)

    async def _terminate_then_kill(self, job: Job) -> None:
        backend = self.backends[self._running_backend.get(job.id) or self.backend_of(job).name]
        await backend.terminate(job)

        def kill() -> None:
            self._kill_timers.pop(job.id, None)
            if job.id in self._running_frontend:
                self.log.warn("job {job_id}: engine still running {grace} s after SIGTERM; "
                              "killing it", job_id=job.id, grace=self.grace)
                self._in_background(backend.kill(job))

        self._kill_timers[job.id] = self._reactor.callLater(self.grace, kill)

    # -- dispatch ----------------------------------------------------------------------

    def kick(self) -> None:
        """Dispatch soon; calls while a dispatch runs make it look again."""
        if self._recovering:
            return  # QUEUED jobs a batch system holds are not all adopted yet
        if self._dispatching:
            self._dispatch_again = True
            return
        self._dispatching = True
        self._in_background(self._dispatch())

    async def _dispatch(self) -> None:
        try:
            while True:
                self._dispatch_again = False
                await self._dispatch_once()
                if not self._dispatch_again:
                    break
        except DatabaseUnavailable:
            # The queue is still there: look again when the database may be back.
            self.log.warn("dispatch: the database is unavailable; trying again")
            self._reactor.callLater(DATABASE_RETRY_SECONDS, self.kick)
        finally:
            self._dispatching = False

    def free_slots(self, backend: str) -> int:
        """Jobs that could be handed to C{backend} now."""
        return max(self.limits.get(backend, 0) - self._count(backend), 0)

    def _count(self, backend: str) -> int:
        return sum(1 for name in self._running_backend.values() if name == backend)

    async def _dispatch_once(self) -> None:
        for name in self.backends:
            await self._dispatch_to(name)

    async def _dispatch_to(self, name: str) -> None:
        limit = self.limits[name]
        while self.running and self._count(name) < limit:
            full = []
            if self.max_per_frontend:
                counts: dict[int, int] = {}
                for frontend in self._running_frontend.values():
                    counts[frontend] = counts.get(frontend, 0) + 1
                full = [f for f, n in counts.items() if n >= self.max_per_frontend]
            free = limit - self._count(name)
            # Jobs a batch system holds stay QUEUED while they are pending.
            handed = [job_id for job_id, b in self._running_backend.items() if b == name]
            candidates = await self._store.jobs.next_queued(
                free, full, backend=name, default_backend=name == self.default_backend,
                exclude_ids=handed)
            if not candidates:
                return
            for job in candidates:
                if self._count(name) >= limit:
                    return
                await self._start_job(job, self.backends[name])

    async def _start_job(self, job: Job, backend) -> None:
        """
        Stage, prepare and start a QUEUED job.  A backend that runs engines
        at once (local) has the job RUNNING before its engine starts, so that
        a pause or stop that arrives meanwhile finds it; a batch backend
        (C{backend.batch}) keeps it QUEUED until the batch system starts it
        (L{engine_started}).
        """
        async with self._lock(job.id):
            if job.id in self._running_frontend:
                return  # handed to its backend already
            self._track(job, backend)  # the slot is taken
            try:
                staged = await self._stage_inputs(job)
            except DatabaseUnavailable:
                self._untrack(job.id)  # still QUEUED: dispatched again later
                raise
            except KreeError as e:
                self._untrack(job.id)
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
                self._untrack(job.id)
                return  # paused, stopped or deleted since it was queued
            except DatabaseUnavailable:
                self._untrack(job.id)  # the transition did not happen: still QUEUED
                raise
            try:
                await self._prepare(job, staged)
                ref = await backend.start(job)
                # The engine runs: how to find it again must reach the store.
                await self._patiently(self._store.jobs.update_runtime, job.id,
                                      backend=backend.name, backend_ref=ref)
            except Exception as e:
                self._untrack(job.id)
                reason = e.message if isinstance(e, KreeError) else f"the engine could not start: {e}"
                if not isinstance(e, KreeError):
                    self.log.failure("job {job_id}: start failed", job_id=job.id)
                try:
                    await self._patiently(self._jobs.apply, job.id, Action.FAIL, reason=reason,
                                          updates={"error": reason})
                except (InvalidTransition, JobNotFound):
                    pass

    async def _stage_inputs(self, job: Job) -> dict[str, Path]:
        """
        Fetch the job's inputs (the cache answers for those it has) while the
        job is still QUEUED; a failure fails the job with the reason.
        """
        detail = await self._store.jobs.get_detail(job.id)
        if not detail.inputs:
            return {}
        await self._jobs.add_message(job.id, "staging inputs: " + ", ".join(
            i.name for i in detail.inputs))
        staged = {}
        for item in detail.inputs:
            try:
                result = await self._fetcher.fetch(item.uri)
            except DatabaseUnavailable:
                raise  # still QUEUED: staged again later
            except KreeError:
                await self._patiently(self._store.jobs.record_staging_failed, job.id, item.name)
                raise
            staged[item.name] = result.path
            await self._store.jobs.record_staged(job.id, item.name, result.sha256, result.size)
            await self._jobs.add_message(
                job.id, f"staged input {item.name} ({result.size} bytes, "
                        f"{'fetched' if result.fetched else 'from the cache'})")
        return staged

    async def _prepare(self, job: Job, staged: dict[str, Path]) -> None:
        detail = await self._patiently(self._store.jobs.get_detail, job.id)
        policy = await self._patiently(self._store.policies.all)
        if job.workflow_sha256 is None:
            raise jobdir.PreparationFailed("the job has no fetched workflow version")
        await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), jobdir.prepare, Path(job.job_dir),
            workflow=self._fetcher.cache_path(job.workflow_sha256),
            parameters=detail.parameters, policy=policy, inputs=staged)

    # -- what the engine reports (EngineObserver) ---------------------------------------

    async def engine_events(self, job_id: str, lines: list[dict], consumed: int) -> None:
        """
        Apply an engine's lines.  Lines from several engines that arrive
        while a transaction is under way go together in the next one (group
        commit): with many engines, the database thread would otherwise
        spend itself on one commit per engine wake-up, and every API request
        would queue behind them.
        """
        done: Deferred = Deferred()
        self._event_batches.append((job_id, lines, consumed, done))
        if not self._applying_events:
            self._in_background(self._apply_event_batches())
        try:
            await done
        except JobNotFound:
            pass  # deleted while it ran

    async def _apply_event_batches(self) -> None:
        self._applying_events = True
        try:
            while self._event_batches:
                batch, self._event_batches = self._event_batches, []
                items = [(job_id, lines, consumed) for job_id, lines, consumed, _ in batch]
                try:
                    results = await self._patiently(self._jobs.apply_engine_events_many, items)
                except Exception:
                    if len(batch) > 1:
                        self.log.failure("applying {count} engines' events together failed; "
                                         "one by one", count=len(batch))
                    results = []
                    for item in items:  # one bad batch must not hold back the others
                        try:
                            results.append(
                                await self._patiently(self._jobs.apply_engine_events, *item))
                        except Exception as e:
                            results.append(e)
                for (_, _, _, done), result in zip(batch, results):
                    if isinstance(result, Exception):
                        done.errback(result)
                    else:
                        done.callback(result)
        finally:
            self._applying_events = False

    async def engine_started(self, job_id: str, detail: str) -> bool:
        """
        A batch system started a job it held: QUEUED becomes RUNNING.  False
        if the job's state does not allow it (paused, stopped or deleted
        meanwhile): the backend asks again later, or acts on the change.
        """
        return await self._system_action(job_id, Action.DISPATCH, detail)

    async def engine_note(self, job_id: str, text: str) -> None:
        """What the backend has to say about a job (why Slurm keeps it pending)."""
        try:
            await self._patiently(self._jobs.add_message, job_id, text,
                                  source=self._running_backend.get(job_id, "kree"))
        except JobNotFound:
            pass

    async def engine_paused(self, job_id: str, reason: str) -> bool:
        """The batch system suspended the job (not at our request): PAUSED."""
        return await self._system_action(job_id, Action.PAUSE, reason)

    async def engine_resumed(self, job_id: str, reason: str) -> bool:
        """The batch system resumed a job it or we had suspended."""
        return await self._system_action(job_id, Action.RESUME, reason)

    async def _system_action(self, job_id: str, action: Action, reason: str) -> bool:
        try:
            await self._patiently(self._jobs.apply, job_id, action, reason=reason)
        except (InvalidTransition, JobNotFound):
            return False
        return True

    async def engine_exited(self, job_id: str, *, ended: bool, adopted: bool,
                            reason: str | None = None) -> None:
        """
        @param reason: why the job failed, when the backend knows better than
            the engine's end event (a batch system's time or memory limit).
        """
        self._untrack(job_id)
        self._peak.pop(job_id, None)
        self._cancel_input_timer(job_id)
        timer = self._kill_timers.pop(job_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        try:
            await self._engine_gone(job_id, ended=ended, adopted=adopted, reason=reason)
        finally:
            self._locks.pop(job_id, None)
            self.kick()

    async def _engine_gone(self, job_id: str, *, ended: bool, adopted: bool,
                           reason: str | None) -> None:
        try:
            job = await self._patiently(self._store.jobs.get, job_id)
        except JobNotFound:
            job = None
        if ended and job is not None and not job.state.terminal:
            # Its end event did not apply in the state KREE had it in: the
            # engine is gone all the same, and the job must not wait forever.
            ended = False
            reason = reason or (f"the engine ended (exit code {job.exit_code}) while the "
                                f"job was {job.state}")
        if not ended:
            if job is not None and not job.state.terminal:
                reason = reason or (LOST if adopted else VANISHED)
                if await deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                           _disk_full, Path(job.job_dir)):
                    reason = DISK_FULL
                try:
                    await self._patiently(self._jobs.apply, job_id, Action.FAIL, reason=reason,
                                          updates={"error": reason})
                except InvalidTransition:
                    pass
        try:
            job = await self._patiently(self._store.jobs.get, job_id)
            await self._clean_up(job)
        except JobNotFound:
            pass

    async def _clean_up(self, job: Job) -> None:
        """Temporary files go; products, the log and events stay until delete."""

        def clean(job_dir: Path) -> None:
            shutil.rmtree(job_dir / "answers", ignore_errors=True)
            for leftover in job_dir.glob(".kree-*"):
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)

        await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), clean,
                                Path(job.job_dir))

    # -- results to storage ---------------------------------------------------------------------

    async def _upload_products(self, job_id: str) -> None:
        """resources.outputs_to: PUT every product there, each outcome a job message."""
        job = await self._store.jobs.get(job_id)
        target = job.resources.get("outputs_to")
        if not target:
            return

        async def report(level: str, text: str) -> None:
            await self._jobs.add_message(job_id, text, level=level)

        outcomes = await self._uploader.upload(Path(job.job_dir), target, report)
        await deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                jobdir.record_uploads, Path(job.job_dir),
                                [o.to_json() for o in outcomes])

    # -- answers and input timeouts ----------------------------------------------------------

    async def answer(self, job: Job, n: int, answers: dict[str, Any], *,
                     frontend_id: int | None) -> Job:
        """Deliver an answer to the waiting engine; the job is RUNNING again."""
        async with self._lock(job.id):
            job = await self._jobs.apply(job.id, Action.ANSWER, reason="answered",
                                         frontend_id=frontend_id)
            self._cancel_input_timer(job.id)
            await self.backend_of(job).answer(job, n, answers)
            return job

    async def _arm_input_timer(self, job_id: str) -> None:
        job = await self._store.jobs.get(job_id)
        timeout = job.resources.get("input_timeout")
        if not timeout:
            return
        self._cancel_input_timer(job_id)

        def expired() -> None:
            self._input_timers.pop(job_id, None)
            self._in_background(self._input_timed_out(job_id))

        self._input_timers[job_id] = self._reactor.callLater(timeout, expired)

    async def _input_timed_out(self, job_id: str) -> None:
        try:
            job = await self._jobs.apply(job_id, Action.FAIL, reason="input timeout",
                                         updates={"error": "input timeout"})
        except (InvalidTransition, JobNotFound):
            return
        await self._act(job.id, "kill")

    def _cancel_input_timer(self, job_id: str) -> None:
        timer = self._input_timers.pop(job_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    # -- monitoring and limits --------------------------------------------------------------------

    async def _sample(self) -> None:
        # A backend that can (usage_many: the local one) is asked once per
        # round for all its jobs, from one scan of /proc, and those jobs'
        # records are read in one transaction and written in another; any
        # other backend's jobs are sampled one by one (_sample_job).
        store = self._store.jobs

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
        for job_id in list(self._running_frontend):
            name = self._running_backend.get(job_id)
            if name in self.backends and self.backends[name].samples_together:
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
                usages = await self.backends[name].usage_many(jobs)
                values = {}
                for job in jobs:
                    usage = usages[job.id]
                    peak = max(self._peak.get(job.id, 0), usage.rss_bytes,
                               job.peak_memory_bytes or 0)
                    if job.id in self._running_frontend:  # not ended meanwhile
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
                    walltime = job.resources.get("walltime") or self.default_walltime
                    memory = job.resources.get("memory")
                    if walltime and job.running_time(self._jobs.now()) > walltime:
                        await self._limit(job, "walltime", self._terminate_then_kill)
                    elif memory and usages[job.id].rss_bytes > memory:
                        await self._limit(job, "memory", "kill")
                except JobNotFound:
                    pass
                except Exception:
                    self.log.failure("monitoring job {job_id} failed", job_id=job.id)

    async def _sample_job(self, job_id: str) -> None:
        job = await self._store.jobs.get(job_id)
        if job.state.terminal:
            return
        usage = await self.backends[self._running_backend[job_id]].usage(job)
        peak = max(self._peak.get(job_id, 0), usage.rss_bytes, job.peak_memory_bytes or 0)
        self._peak[job_id] = peak
        await self._store.jobs.update_runtime(job_id, cpu_seconds=round(usage.cpu_seconds, 3),
                                              peak_memory_bytes=peak)
        walltime = job.resources.get("walltime") or self.default_walltime
        memory = job.resources.get("memory")
        if walltime and job.running_time(self._jobs.now()) > walltime:
            await self._limit(job, "walltime", self._terminate_then_kill)
        elif memory and usage.rss_bytes > memory:
            await self._limit(job, "memory", "kill")

    async def _limit(self, job: Job, reason: str, operation) -> None:
        try:
            await self._jobs.apply(job.id, Action.FAIL, reason=reason, updates={"error": reason})
        except InvalidTransition:
            return
        self.log.info("job {job_id} exceeded its {limit}", job_id=job.id, limit=reason)
        await self._act(job.id, operation)

    # -- deleting ---------------------------------------------------------------------------------

    async def release(self, job: Job) -> None:
        """
        Before a job's directory is removed (its record may be gone already):
        its engine must be gone.
        """
        name = self._running_backend.get(job.id)
        if name is not None:
            async with self._lock(job.id):
                if job.id in self._running_backend:
                    await self.backends[name].kill(job)
            await self.backends[name].wait_exited(job.id)

    # -- restart ------------------------------------------------------------------------------------

    async def _recover(self) -> None:
        adopted = 0
        # A database that is away at start is waited for: an outage must not
        # make healthy records look damaged (quarantined) below.
        candidates = await self._patiently(self._store.jobs.active_ids)
        for name, backend in self.backends.items():
            if backend.batch:
                candidates += await self._patiently(self._store.jobs.submitted_ids, name)
        # Each job once, even if two queries named it: never two adoptions.
        unique: dict[str, str] = {}
        for job_id, raw_state in candidates:
            unique.setdefault(job_id, raw_state)
        candidates = list(unique.items())

        # Every record first, in one transaction, before any engine is
        # followed again: the followers' catch-up transactions would
        # otherwise queue ahead of each read (46 ms a job with 200 engines).
        store = self._store.jobs

        def read_thd(conn, job_ids: list[str]) -> dict[str, Job]:
            found = {}
            for job_id in job_ids:
                try:
                    found[job_id] = store.get_thd(conn, job_id)
                except JobNotFound:
                    pass
            return found

        try:
            records = await self._patiently(self._store.pool.run, read_thd,
                                            [job_id for job_id, _ in candidates])
        except DatabaseUnavailable:
            raise
        except Exception:
            records = {}  # a record that cannot be read: one by one below, so only it fails

        async def recover(job_id: str, raw_state: str) -> None:
            nonlocal adopted
            try:
                job = records.get(job_id) or await self._patiently(self._store.jobs.get, job_id)
                if (job.state is JobState.PAUSED and job.paused_from is JobState.QUEUED
                        and not job.backend_ref):
                    return  # held before it was handed to a backend: nothing to adopt
                if job.state is JobState.PAUSED and job.paused_from is None:
                    raise ValueError("PAUSED without the state it was paused from")
                backend = self.backend_of(job)
                self._track(job, backend)
                alive = await backend.adopt(job)
                if alive:
                    adopted += 1
                    if job.state is JobState.PAUSED:
                        await backend.pause(job)  # anything forked meanwhile stops too
                    elif job.state is JobState.WAITING:
                        await self._arm_input_timer(job.id)
            except DatabaseUnavailable:
                self._untrack(job_id)  # shutting down with the database away: not damaged
                raise
            except Exception as e:
                self._untrack(job_id)
                reason = f"its record could not be understood ({type(e).__name__}: {e})"
                self.log.failure("job {job_id} (state {state!r}) quarantined", job_id=job_id,
                                 state=raw_state)
                try:
                    await self._jobs.quarantine(job_id, reason)
                except Exception:
                    self.log.failure("could not quarantine job {job_id}", job_id=job_id)

        # Several jobs at a time (a backend's adopt waits on a thread or a
        # batch system; re-pausing a PAUSED job scans /proc), each exactly once.
        queue = iter(candidates)

        async def worker() -> None:
            for job_id, raw_state in queue:
                await recover(job_id, raw_state)

        workers = [Deferred.fromCoroutine(worker()) for _ in range(min(16, len(candidates)))]
        for finished in workers:
            await finished
        if adopted:
            self.log.info("re-adopted {count} running engines", count=adopted)

    async def _cancel_strays(self) -> None:
        """
        Jobs a batch system still runs for KREE whose records ended or are
        gone (kreed stopped during a stop's grace period, or a record was
        deleted meanwhile): nothing follows them, so they are cancelled.
        """
        for name, backend in self.backends.items():
            for job_id, cancel in backend.untracked().items():
                try:
                    job = await self._patiently(self._store.jobs.get, job_id)
                except JobNotFound:
                    job = None
                if job is None or job.state.terminal:
                    self.log.warn("job {job_id}: still in {backend} but {why}; cancelling it",
                                  job_id=job_id, backend=name,
                                  why="deleted" if job is None else f"{job.state}")
                    await cancel()

    @property
    def running_count(self) -> int:
        return len(self._running_frontend)

    async def backend_status(self) -> list[dict[str, Any]]:
        """Per backend: its name, jobs handed to it, its limit, and what it says."""
        out = []
        for name, backend in self.backends.items():
            entry: dict[str, Any] = {"name": name, "jobs": self._count(name),
                                     "limit": self.limits[name]}
            entry.update(await backend.status())
            out.append(entry)
        return out
