"""
Helpers of the tests that drive time (tests/test_*_clock.py).

Everything there is synchronous: the store runs on the synchronous DB pool,
blocking work runs in place, and time passes only when the test advances a
clock.  So a Deferred has either fired when its call returns, or waits on
the clock (or on something the test must do, such as answer a process).

- L{fired}: the result of a Deferred that must have fired already.
- L{run}: a coroutine run to its end, now.
- L{in_place}: an C{in_thread} for the supervisor that runs the work at once.
- L{synchronous_store}: a started store on a real SQLite file, migrated,
  whose transactions run at once (the synchronous DB pool).
- L{Reactor}: Twisted's MemoryReactorClock (TCP connections recorded, a
  clock) whose thread pool runs work at once and whose processes are the
  test's to answer (L{SpawnedProcess.finish}): the real code above the
  reactor (Slurm commands, HTTP requests) runs unchanged.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

def synchronous_store(path, clock):
    """A started, migrated store on the SQLite file C{path}, on the synchronous pool."""
    from kree.store import Store, migrate
    from kree.store.engine import create_engine
    from kree.store.pool import SynchronousDBPool

    engine = create_engine(f"sqlite:///{path}")
    store = Store(engine, clock, pool=SynchronousDBPool(engine, clock))
    store.start()
    store.pool.run_in_thread(migrate.upgrade)
    return store


# 2027-01-15, so that job ids and times look like the daemon's.
START = 1_800_000_000.0


def fired(d: Deferred):
    """The result of C{d}, which must have fired (all is synchronous here)."""
    results: list = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired: it waits on the clock or on the test"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def run(coroutine):
    return fired(Deferred.fromCoroutine(coroutine))


def in_place(fn, *args, **kwargs) -> Deferred:
    """Blocking work, done at once (the supervisor's C{in_thread})."""
    return Deferred.fromCoroutine(_call(fn, *args, **kwargs))


async def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


class InPlaceThreads:
    """A thread pool that runs each call at once, on the caller's thread."""

    def callInThreadWithCallback(self, on_result, fn, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


@attrs.define
class SpawnedProcess:
    """A process the code under test started: its command, and its end when the test says."""

    protocol: Any
    executable: str
    args: list[str]
    env: dict[str, str] | None
    signals: list[str] = attrs.field(factory=list)
    ended: bool = False

    @property
    def command(self) -> str:
        """The program's name (C{squeue})."""
        return self.executable.rsplit("/", 1)[-1]

    def finish(self, out: str = "", err: str = "", code: int = 0) -> None:
        assert not self.ended, f"{self.command} ended already"
        self.ended = True
        if out:
            self.protocol.outReceived(out.encode())
        if err:
            self.protocol.errReceived(err.encode())
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
        self.protocol.processEnded(Failure(reason))


class _ProcessTransport:
    def __init__(self, spawned: SpawnedProcess) -> None:
        self._spawned = spawned
        self.pid = 4000

    def signalProcess(self, signal: str) -> None:
        self._spawned.signals.append(signal)


class Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.advance(START)
        self.processes: list[SpawnedProcess] = []

    def getThreadPool(self):
        return InPlaceThreads()

    def callFromThread(self, fn, *args, **kwargs):
        fn(*args, **kwargs)

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None, uid=None,
                     gid=None, usePTY=False, childFDs=None):
        spawned = SpawnedProcess(protocol, executable, list(args), env)
        self.processes.append(spawned)
        protocol.makeConnection(_ProcessTransport(spawned))
        return protocol.transport

    def unanswered(self, command: str | None = None) -> list[SpawnedProcess]:
        """Processes (of C{command}) that have not ended."""
        return [p for p in self.processes
                if not p.ended and (command is None or p.command == command)]

    def spawned(self, command: str) -> list[SpawnedProcess]:
        return [p for p in self.processes if p.command == command]
