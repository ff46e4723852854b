"""
How the supervisor's parts work off the reactor's critical path: tasks that
nobody awaits, whose failure is logged (L{in_background}); store calls that
must survive a database outage, tried again until it ends (L{Patience}); and
blocking file work in a thread (L{InThread}: the reactor's thread pool in
the daemon, a direct call in Clock-driven tests).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Coroutine

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kree.errors import DatabaseUnavailable

# Seconds between tries of a store call while the database is away.
DATABASE_RETRY_SECONDS = 1.0

log = Logger(namespace="kree.supervisor")

#: Runs C{fn(*args, **kwargs)} (blocking file work) away from the reactor thread.
InThread = Callable[..., Awaitable[Any]]


def reactor_threads(reactor) -> InThread:
    """L{InThread} on the reactor's thread pool (the daemon's)."""

    def run(fn, *args, **kwargs):
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

    return run


def in_background(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Run C{coroutine} without awaiting it; a failure is logged."""

    def failed(failure):
        log.failure("supervisor task failed", failure=failure)

    Deferred.fromCoroutine(coroutine).addErrback(failed)


class Patience:
    """
    A store call that must not be lost to a database outage (the engine's
    events, what the backend needs to find an engine again): tried again
    every DATABASE_RETRY_SECONDS for as long as the supervisor runs.
    """

    def __init__(self, reactor, running: Callable[[], bool]) -> None:
        self._reactor = reactor
        self._running = running

    async def __call__(self, call, *args, **kwargs):
        told = False
        while True:
            try:
                return await call(*args, **kwargs)
            except DatabaseUnavailable:
                if not self._running():
                    raise
                if not told:
                    log.warn("supervisor: the database is unavailable; trying again")
                    told = True
                await deferLater(self._reactor, DATABASE_RETRY_SECONDS)
