"""
Waiting in tests: on a condition, with a generous deadline, never a fixed
sleep.  The CI machine has two cores and may be busy, so a deadline is how
long we are willing to wait for something that should happen, not how long
it usually takes.

- L{wait_for}: poll until C{condition()} is truthy and return its value; fail
  with C{what} (and the last value seen) at the deadline.  For tests that
  block (live daemons, subprocesses, threads).
- L{holds_for}: assert that C{condition()} stays truthy for C{duration}
  seconds: for "nothing more arrives" or "it is still running", where no
  event says the thing did not happen.
- L{until}: L{wait_for} inside the reactor (C{await until(...)}), polling with
  C{deferLater} so the reactor keeps running.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, TypeVar

from twisted.internet.task import deferLater

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0


def wait_for(condition: Callable[[], T], what: str, *, timeout: float = DEFAULT_TIMEOUT,
             interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last seen: {value!r}")
        time.sleep(interval)


def holds_for(condition: Callable[[], object], what: str, *, duration: float,
              interval: float = 0.05) -> None:
    deadline = time.monotonic() + duration
    while True:
        value = condition()
        assert value, f"expected {what} for {duration:g} s; it stopped: {value!r}"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


async def until(condition: Callable[[], T], what: str, *, timeout: float = DEFAULT_TIMEOUT,
                interval: float = 0.05, clock=None) -> T:
    if clock is None:
        from twisted.internet import reactor as clock
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last seen: {value!r}")
        await deferLater(clock, interval, lambda: None)


async def until_awaited(condition: Callable[[], Awaitable[T]], what: str, *,
                        timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05,
                        clock=None) -> T:
    """L{until} for a condition that must be awaited (a store read)."""
    if clock is None:
        from twisted.internet import reactor as clock
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last seen: {value!r}")
        await deferLater(clock, interval, lambda: None)
