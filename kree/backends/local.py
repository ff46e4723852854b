"""
The local backend: engines as processes on this machine.

Each engine is `python -m kree.engine run JOBDIR` (or the engine of the
kind the job directory holds, kree.engines.kind_in: kree.cwl for CWL),
spawned through the reactor with its standard output and error going to JOBDIR/engine.log, fd 3
piped to us, and the environment variable KREE_JOB_ID marking every process
of its tree (see kree.backends.proctree).  The engine puts itself in a
session and process group of its own.

Events are always read from JOBDIR/events.jsonl, the engine's durable
record: data on fd 3 only wakes the reader.  So an engine we started and an
engine re-adopted after a daemon restart (whose pipes died with the old
daemon) are followed the same way; the reader skips the lines the store has
already applied.  Answers go to the engine's stdin while it is our child,
and as JOBDIR/answers/<n>.json (written atomically) once it is not.

Pause, resume and kill act on the whole tree with psutil in a thread, never
on the reactor thread.  Besides the backend interface, usage_many() reports
the usage of many jobs from one scan of /proc (the supervisor's monitor
prefers it to one usage() per job).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kree.backends import Backend, EngineObserver, engine_environment, proctree
from kree.backends.eventfile import EventTail, write_answer_file
from kree.engines import kind_in
from kree.records import Job
from kree.sandbox import Sandbox

# How often an adopted engine (no pipe to wake us) is checked, in seconds.
POLL_SECONDS = 0.25


class EngineProcess(protocol.ProcessProtocol):
    """The pipes of an engine we started."""

    def __init__(self, engine: "LocalEngine") -> None:
        self.engine = engine
        self.ended = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.engine.wake()

    def processEnded(self, reason) -> None:
        self.engine.exited = True
        self.engine.wake()
        self.ended.callback(None)

    def write_stdin(self, data: bytes) -> bool:
        try:
            self.transport.writeToChild(0, data)
        except (OSError, KeyError, AttributeError):
            return False
        return True


class LocalEngine:
    """One engine being followed: its events, its exit."""

    log = Logger()

    def __init__(self, backend: "LocalBackend", job: Job, ref: proctree.ProcessRef | None,
                 process: EngineProcess | None) -> None:
        self.backend = backend
        self.job_id = job.id
        self.job_dir = Path(job.job_dir)
        self.ref = ref
        self.process = process
        self.adopted = process is None
        self.exited = False
        self.tail = EventTail(self.job_dir / "events.jsonl", job.events_consumed)
        self._waiter: Deferred | None = None
        self._woken = False
        self._detached = False
        self.done: Deferred | None = None

    def wake(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.called:
            self._waiter.callback(None)

    async def _nap(self, seconds: float) -> None:
        if self._woken:
            self._woken = False
            return
        self._waiter = Deferred()
        call = self.backend.reactor.callLater(seconds, self.wake)
        await self._waiter
        if call.active():
            call.cancel()
        self._waiter = None
        self._woken = False

    def _read_adopted(self) -> tuple[list[dict[str, Any]], bool]:
        """Thread side, for an adopted engine: the new lines and, if none, whether it runs."""
        lines = self.tail.read()
        return lines, bool(lines) or proctree.is_alive(self.ref)

    async def follow(self) -> None:
        """Apply every event line, in order, until the engine has exited."""
        observer = self.backend.observer
        while not self._detached:
            if self.adopted and not self.exited:
                # One thread hop a poll, not two: a restart may adopt hundreds.
                lines, alive = await self.backend.in_thread(self._read_adopted)
                if not alive:
                    self.exited = True
                    continue  # one last read of what it wrote before going
            else:
                lines = await self.backend.in_thread(self.tail.read)
            if lines:
                await observer.engine_events(self.job_id, lines, self.tail.consumed)
                continue
            if self.exited:
                break
            await self._nap(POLL_SECONDS if self.adopted else 5.0)
        if not self._detached:
            await observer.engine_exited(self.job_id, ended=self.tail.saw_end,
                                         adopted=self.adopted)

    def detach(self) -> None:
        self._detached = True
        self.wake()


class LocalBackend(Backend):
    name = "local"
    # The engines on this machine are always offered; [backends.local] has no keys.
    always_enabled = True
    on_this_machine = True
    # One scan of /proc samples every job (usage_many).
    samples_together = True
    log = Logger()

    def __init__(self, reactor, observer: EngineObserver, *, python: str = sys.executable,
                 sandbox: Sandbox | None = None) -> None:
        """@param sandbox: contains every engine (kree.sandbox); None: not contained."""
        self.reactor = reactor
        self.observer = observer
        self.python = python
        self.sandbox = sandbox
        # The accounts a job's processes may run as: kreed's, and the
        # engines' own when the sandbox changes account.
        account = sandbox.account if sandbox is not None else None
        self.uids = frozenset({os.getuid()} | ({account.uid} if account else set()))
        self._threadpool = reactor.getThreadPool()
        self.engines: dict[str, LocalEngine] = {}

    def in_thread(self, fn, *args, **kwargs):
        return deferToThreadPool(self.reactor, self._threadpool, fn, *args, **kwargs)

    def _follow(self, engine: LocalEngine) -> None:
        self.engines[engine.job_id] = engine

        async def run() -> None:
            try:
                await engine.follow()
            except Exception:
                self.log.failure("following the engine of job {job_id} failed",
                                 job_id=engine.job_id)
            finally:
                if self.engines.get(engine.job_id) is engine:
                    del self.engines[engine.job_id]

        engine.done = Deferred.fromCoroutine(run())

    async def start(self, job: Job) -> dict[str, Any]:
        job_dir = Path(job.job_dir)
        if self.sandbox is not None:
            await self.in_thread(self.sandbox.hand_over, job_dir)
        log_fd = await self.in_thread(
            os.open, str(job_dir / "engine.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        kind = await self.in_thread(kind_in, job_dir)
        engine = LocalEngine(self, job, None, None)
        process = EngineProcess(engine)
        engine.process = process
        try:
            transport = self.reactor.spawnProcess(
                process, self.python, kind.run_command(job_dir, python=self.python),
                env=engine_environment(job, self.sandbox), path=str(job_dir),
                childFDs={0: "w", 1: log_fd, 2: log_fd, 3: "r"},
            )
        finally:
            os.close(log_fd)
        engine.ref = await self.in_thread(proctree.ref_for, transport.pid)
        self._follow(engine)
        self.log.info("job {job_id}: {kind} engine started, pid {pid}", job_id=job.id,
                      kind=kind.name, pid=transport.pid)
        return engine.ref.to_json()

    async def adopt(self, job: Job) -> bool:
        try:
            ref = proctree.ProcessRef.from_json(job.backend_ref)
        except (ValueError, TypeError):
            ref = None
        alive = ref is not None and await self.in_thread(proctree.is_alive, ref)
        engine = LocalEngine(self, job, ref, None)
        if not alive:
            engine.exited = True
        self._follow(engine)
        return alive

    def _ref(self, job: Job) -> proctree.ProcessRef | None:
        engine = self.engines.get(job.id)
        if engine is not None and engine.ref is not None:
            return engine.ref
        try:
            return proctree.ProcessRef.from_json(job.backend_ref)
        except (ValueError, TypeError):
            return None

    async def pause(self, job: Job) -> None:
        await self.in_thread(proctree.pause, self._ref(job), job.id, self.uids)

    async def resume(self, job: Job) -> None:
        await self.in_thread(proctree.resume, self._ref(job), job.id, self.uids)

    async def terminate(self, job: Job) -> None:
        ref = self._ref(job)
        if ref is not None:
            # A paused engine cannot act on SIGTERM: continue it first.
            await self.in_thread(proctree.resume, ref, job.id, self.uids)
            await self.in_thread(proctree.terminate, ref)

    async def kill(self, job: Job) -> None:
        await self.in_thread(proctree.kill, self._ref(job), job.id, uids=self.uids)

    async def answer(self, job: Job, n: int, answer: dict[str, Any]) -> None:
        line = json.dumps(answer).encode() + b"\n"
        engine = self.engines.get(job.id)
        if engine is not None and engine.process is not None and not engine.exited:
            if engine.process.write_stdin(line):
                return
        await self.in_thread(write_answer_file, Path(job.job_dir), n, line)

    async def usage(self, job: Job) -> proctree.Usage:
        return await self.in_thread(proctree.usage, self._ref(job), job.id, self.uids)

    async def usage_many(self, jobs: list[Job]) -> dict[str, proctree.Usage]:
        """L{usage} of every job in C{jobs} from one scan of /proc (the monitor's round)."""
        return await self.in_thread(proctree.usage_many,
                                    {job.id: self._ref(job) for job in jobs}, self.uids)

    async def wait_exited(self, job_id: str) -> None:
        engine = self.engines.get(job_id)
        if engine is not None and engine.done is not None:
            await engine.done

    async def detach(self) -> None:
        for engine in list(self.engines.values()):
            engine.detach()
        for engine in list(self.engines.values()):
            if engine.done is not None:
                await engine.done

    def running(self) -> int:
        return len(self.engines)

