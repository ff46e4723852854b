"""
Events to those who wait for them.

L{EventWaiters} serves long polls (GET /v1/jobs/{id}/events?wait=N): it
observes the job service and wakes every poll waiting on a job as soon as one
of its events commits.  (Callback delivery to subscribed listeners and
server-sent events are issue 6.)
"""

from __future__ import annotations

from collections import defaultdict

from twisted.internet.defer import CancelledError, Deferred, TimeoutError

from kree.records import Event


class EventWaiters:
    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._waiting: dict[str, list[Deferred]] = defaultdict(list)

    def observe(self, event: Event) -> None:
        """A JobService observer: wake the waiters of the event's job."""
        for waiter in self._waiting.pop(event.job_id, []):
            if not waiter.called:
                waiter.callback(event)

    def waiter(self, job_id: str) -> Deferred:
        """
        Register interest now; fires with the next event of C{job_id}.

        Register before reading the store, then wait only if the read found
        nothing: an event committed between the read and the wait still
        wakes the waiter.
        """
        waiter = Deferred()
        self._waiting[job_id].append(waiter)
        return waiter

    async def until(self, waiter: Deferred, timeout: float) -> bool:
        """Wait for a registered C{waiter}, at most C{timeout} seconds."""
        waiter.addTimeout(timeout, self._reactor)
        try:
            await waiter
        except (CancelledError, TimeoutError):
            return False
        finally:
            self.forget(waiter)
        return True

    def forget(self, waiter: Deferred) -> None:
        """Withdraw a waiter that is no longer needed."""
        for job_id, waiters in list(self._waiting.items()):
            if waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiting[job_id]

    def count(self) -> int:
        return sum(len(w) for w in self._waiting.values())
