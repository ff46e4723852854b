"""
What engines report, applied through the job service: the
L{kree.backends.EngineObserver} that every backend is given.

- Lines of an engine's events.jsonl become messages, progress, prompts,
  products and the final state (L{kree.jobs.JobService.apply_engine_events});
  lines from several engines that arrive while a transaction is under way go
  together in the next one (group commit).
- A batch system's own doings: a held job started (QUEUED becomes RUNNING),
  a note on why it is pending, a suspension or resumption it made.
- An engine's exit: its job untracked and its timers cancelled; a job that
  is not yet terminal FAILS (its end event did not apply, or there was none:
  "lost during daemon restart" for an adopted engine, else "the engine exited
  without reporting its end", or the disk was full); temporary files go; the
  record forgets how to find the engine (C{backend_ref}), so that recovery
  after a restart knows it is gone; a slot is free, so dispatch looks again.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kree.errors import InvalidTransition, JobNotFound
from kree.jobs import JobService
from kree.states import Action
from kree.store import Store
from kree.supervisor.background import InThread, Patience, in_background
from kree.supervisor.monitoring import Monitor
from kree.supervisor.tracking import EngineTracker

LOST = "lost during daemon restart"
VANISHED = "the engine exited without reporting its end (killed?)"
DISK_FULL = "no space left on the file system of the job directory"
# Below this much free space, an engine that vanished is taken to have died of it.
DISK_FULL_BYTES = 256 * 1024


def _disk_full(job_dir: Path) -> bool:
    try:
        return shutil.disk_usage(job_dir).free < DISK_FULL_BYTES
    except OSError:
        return False


def _clean(job_dir: Path) -> None:
    """Temporary files go; products, the log and events stay until delete."""
    shutil.rmtree(job_dir / "answers", ignore_errors=True)
    # cwltool's working directories of its steps (kree.cwl): a stopped or
    # killed CWL job leaves them behind, however large its steps made them.
    shutil.rmtree(job_dir / "tmpout", ignore_errors=True)
    for leftover in job_dir.glob(".kree-*"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


class EngineEvents:
    log = Logger()

    def __init__(self, store: Store, jobs: JobService, engines: EngineTracker, monitor: Monitor,
                 *, slot_freed: Callable[[], None], in_thread: InThread,
                 patience: Patience) -> None:
        """@param slot_freed: called once an engine is gone (dispatch looks again)."""
        self._store = store
        self._jobs = jobs
        self._engines = engines
        self._monitor = monitor
        self._slot_freed = slot_freed
        self._in_thread = in_thread
        self._patience = patience
        # Engine events waiting for the next group commit (engine_events).
        self._batches: list[tuple[str, list, int, Deferred]] = []
        self._applying = False

    async def engine_events(self, job_id: str, lines: list[dict[str, Any]],
                            consumed: int) -> None:
        """
        Apply an engine's lines.  Lines from several engines that arrive
        while a transaction is under way go together in the next one (group
        commit): with many engines, the database thread would otherwise
        spend itself on one commit per engine wake-up, and every API request
        would queue behind them.
        """
        done: Deferred = Deferred()
        self._batches.append((job_id, lines, consumed, done))
        if not self._applying:
            in_background(self._apply_batches())
        try:
            await done
        except JobNotFound:
            pass  # deleted while it ran

    async def _apply_batches(self) -> None:
        self._applying = True
        try:
            while self._batches:
                batch, self._batches = self._batches, []
                items = [(job_id, lines, consumed) for job_id, lines, consumed, _ in batch]
                try:
                    results = await self._patience(self._jobs.apply_engine_events_many, items)
                except Exception:
                    if len(batch) > 1:
                        self.log.failure("applying {count} engines' events together failed; "
                                         "one by one", count=len(batch))
                    results = []
                    for item in items:  # one bad batch must not hold back the others
                        try:
                            results.append(
                                await self._patience(self._jobs.apply_engine_events, *item))
                        except Exception as e:
                            results.append(e)
                for (_, _, _, done), result in zip(batch, results):
                    if isinstance(result, Exception):
                        done.errback(result)
                    else:
                        done.callback(result)
        finally:
            self._applying = False

    # -- a batch system's own doings --------------------------------------------------------

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
            await self._patience(self._jobs.add_message, job_id, text,
                                 source=self._engines.backend_name(job_id) or "kree")
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
            await self._patience(self._jobs.apply, job_id, action, reason=reason)
        except (InvalidTransition, JobNotFound):
            return False
        return True

    # -- the engine's exit --------------------------------------------------------------------

    async def engine_exited(self, job_id: str, *, ended: bool, adopted: bool,
                            reason: str | None = None) -> None:
        """
        @param reason: why the job failed, when the backend knows better than
            the engine's end event (a batch system's time or memory limit).
        """
        self._engines.untrack(job_id)
        self._monitor.forget(job_id)
        try:
            await self._engine_gone(job_id, ended=ended, adopted=adopted, reason=reason)
        finally:
            self._engines.forget_lock(job_id)
            self._slot_freed()

    async def _engine_gone(self, job_id: str, *, ended: bool, adopted: bool,
                           reason: str | None) -> None:
        try:
            job = await self._patience(self._store.jobs.get, job_id)
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
                if await self._in_thread(_disk_full, Path(job.job_dir)):
                    reason = DISK_FULL
                try:
                    await self._patience(self._jobs.apply, job_id, Action.FAIL, reason=reason,
                                         updates={"error": reason})
                except InvalidTransition:
                    pass
        try:
            job = await self._patience(self._store.jobs.get, job_id)
            await self._in_thread(_clean, Path(job.job_dir))
            # No engine to find any more (recovery ends engines of ended jobs that have one).
            await self._patience(self._store.jobs.update_runtime, job_id, backend_ref=None)
        except JobNotFound:
            pass
