"""
Recovery after a restart: engines outlive kreed, and are found again.

- Adoption: the engines of RUNNING, WAITING and PAUSED jobs (never a
  recycled pid), and the QUEUED jobs a batch system holds, are followed
  again; the backend replays the events they wrote meanwhile and reports
  those whose engine vanished without an end event ("lost during daemon
  restart").  A PAUSED job's tree is paused again (anything forked meanwhile
  stops too); a WAITING job's input timer starts again.
- Ended jobs with an engine: a job that is already terminal but whose record
  still says how to find its engine (a limit failed it, or a stop aborted it,
  and kreed stopped before the engine was gone) has its engine killed, so that
  none runs forever.  A batch system's such jobs are found by asking it
  (L{Recovery.cancel_strays}).
- Quarantine: a record that cannot be understood FAILS with the reason,
  and never crashes the start.

The database is waited for throughout: an outage must not make healthy
records look damaged.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kree.errors import DatabaseUnavailable, JobNotFound
from kree.jobs import JobService
from kree.records import Job
from kree.states import JobState
from kree.store import Store
from kree.supervisor.background import Patience
from kree.supervisor.monitoring import Monitor
from kree.supervisor.tracking import EngineTracker

# Jobs recovered at the same time (a backend's adopt waits on a thread or a
# batch system; re-pausing a PAUSED job scans /proc).
WORKERS = 16


class Recovery:
    log = Logger()

    def __init__(self, store: Store, jobs: JobService, engines: EngineTracker, monitor: Monitor,
                 *, patience: Patience) -> None:
        self._store = store
        self._jobs = jobs
        self._engines = engines
        self._monitor = monitor
        self._patience = patience

    async def recover(self) -> None:
        """Adopt every engine that may still run, each exactly once."""
        patiently = self._patience
        candidates = await patiently(self._store.jobs.active_ids)
        for name, backend in self._engines.backends.items():
            if backend.batch:
                candidates += await patiently(self._store.jobs.submitted_ids, name)
        candidates += await patiently(self._store.jobs.ended_with_engine_ids)
        # Each job once, even if two queries named it: never two adoptions.
        unique: dict[str, str] = {}
        for job_id, raw_state in candidates:
            unique.setdefault(job_id, raw_state)
        candidates = list(unique.items())
        records = await self._read_all([job_id for job_id, _ in candidates])
        adopted = 0

        async def recover(job_id: str, raw_state: str) -> None:
            nonlocal adopted
            try:
                job = records.get(job_id) or await patiently(self._store.jobs.get, job_id)
                if job.state.terminal:
                    await self._end_engine(job)
                    return
                if await self._adopt(job):
                    adopted += 1
            except DatabaseUnavailable:
                self._engines.untrack(job_id)  # shutting down with the database away: not damaged
                raise
            except Exception as e:
                self._engines.untrack(job_id)
                await self._quarantine(job_id, raw_state, e)

        queue = iter(candidates)

        async def worker() -> None:
            for job_id, raw_state in queue:
                await recover(job_id, raw_state)

        workers = [Deferred.fromCoroutine(worker()) for _ in range(min(WORKERS, len(candidates)))]
        for finished in workers:
            await finished
        if adopted:
            self.log.info("re-adopted {count} running engines", count=adopted)

    async def _read_all(self, job_ids: list[str]) -> dict[str, Job]:
        """
        Every record first, in one transaction, before any engine is
        followed again: the followers' catch-up transactions would
        otherwise queue ahead of each read (46 ms a job with 200 engines).
        """
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
            return await self._patience(self._store.pool.run, read_thd, job_ids)
        except DatabaseUnavailable:
            raise
        except Exception:
            return {}  # a record that cannot be read: one by one, so only it fails

    async def _adopt(self, job: Job) -> bool:
        """Follow an active job's engine again; whether it still runs."""
        if (job.state is JobState.PAUSED and job.paused_from is JobState.QUEUED
                and not job.backend_ref):
            return False  # held before it was handed to a backend: nothing to adopt
        if job.state is JobState.PAUSED and job.paused_from is None:
            raise ValueError("PAUSED without the state it was paused from")
        backend = self._engines.backend_of(job)
        self._engines.track(job, backend)
        alive = await backend.adopt(job)
        if alive:
            if job.state is JobState.PAUSED:
                await backend.pause(job)  # anything forked meanwhile stops too
            elif job.state is JobState.WAITING:
                await self._monitor.arm_input_timer(job.id)
        return alive

    async def _end_engine(self, job: Job) -> None:
        """
        A terminal job whose engine may still run: followed, so that its exit
        is seen, and killed if it runs.  A batch system's are left to
        L{cancel_strays}, which asks the batch system itself.
        """
        backend = self._engines.backend_of(job)
        if backend.batch:
            return
        self._engines.track(job, backend)
        try:
            alive = await backend.adopt(job)
        except DatabaseUnavailable:
            raise
        except Exception:
            # Its record is not damaged (it ended): nothing to quarantine.
            self._engines.untrack(job.id)
            self.log.failure("job {job_id}: could not look for its engine", job_id=job.id)
            return
        if alive:
            self.log.warn("job {job_id}: {state} but its engine still runs; killing it",
                          job_id=job.id, state=str(job.state))
            await self._engines.act(job.id, "kill")

    async def _quarantine(self, job_id: str, raw_state: str, error: Exception) -> None:
        reason = f"its record could not be understood ({type(error).__name__}: {error})"
        self.log.failure("job {job_id} (state {state!r}) quarantined", job_id=job_id,
                         state=raw_state)
        try:
            await self._jobs.quarantine(job_id, reason)
        except Exception:
            self.log.failure("could not quarantine job {job_id}", job_id=job_id)

    async def cancel_strays(self) -> None:
        """
        Jobs a batch system still runs for KREE whose records ended or are
        gone (kreed stopped during a stop's grace period, or a record was
        deleted meanwhile): nothing follows them, so they are cancelled.
        """
        for name, backend in self._engines.backends.items():
            for job_id, cancel in backend.untracked().items():
                try:
                    job = await self._patience(self._store.jobs.get, job_id)
                except JobNotFound:
                    job = None
                if job is None or job.state.terminal:
                    self.log.warn("job {job_id}: still in {backend} but {why}; cancelling it",
                                  job_id=job_id, backend=name,
                                  why="deleted" if job is None else f"{job.state}")
                    await cancel()
