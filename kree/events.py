"""
Events to those who wait for them.

L{EventWaiters} serves long polls and server-sent events: it observes the job
service and wakes every request waiting on a job as soon as one of its events
commits.

L{DeliveryService} drains the outbox (kree.store.deliveries) to subscribed
listeners: each event as a JSON POST signed with HMAC-SHA256 (kree.signing),
one delivery in flight per subscription so each listener gets events in
order, a failing listener holding up only itself.  A 2xx acknowledges; 410
ends the subscription; anything else (other statuses, a refused connection,
a timeout, a URL that now resolves to an internal address) is retried after
the next delay of [events] retry_schedule_seconds, then given up.  Pending
deliveries are rows, so a restart loses none: at least once, ids to dedupe.

When the store fails under it (the database away for longer than the store
waits), the service logs it and looks again after L{STORE_RETRY_SECONDS}:
the outbox is still in the database, so nothing is lost, and an event whose
acknowledgement could not be recorded is delivered again.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from io import BytesIO

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from kree import __version__, signing, urlguard
from kree.httpclient import DiscardBody, PinnedAgent, ServerTLSPolicy, timed_out
from kree.config import Config
from kree.jobs import JobService
from kree.records import Event
from kree.store import Store

# After a failed store operation, how long the delivery service waits to look again.
STORE_RETRY_SECONDS = 1.0


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


class DeliveryService(Service):
    log = Logger()

    def __init__(self, config: Config, store: Store, jobs: JobService, reactor, *,
                 agent: PinnedAgent | None = None) -> None:
        self._config = config
        self._settings = config.events
        self._store = store
        self._jobs = jobs
        self._reactor = reactor
        if agent is None:
            policy = ServerTLSPolicy(self._settings.ca, self._settings.client_cert,
                                     self._settings.client_key)
            agent = PinnedAgent(reactor, connect_timeout=self._settings.timeout_seconds,
                                policy=policy)
        self._agent = agent
        self._in_flight: dict[str, Deferred] = {}
        self._pumping = False
        self._pumper: Deferred | None = None
        self._pump_again = False
        self._timer = None
        self._retry = None

    def startService(self) -> None:
        Service.startService(self)
        self._jobs.add_observer(self._observe)
        self.wake()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        self._jobs.remove_observer(self._observe)
        for timer in (self._timer, self._retry):
            if timer is not None and timer.active():
                timer.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # A pump in progress finishes (it only reads the outbox) and starts no
        # more workers; then the workers it started are cancelled.
        if self._pumper is not None and not self._pumper.called:
            await self._pumper
        for worker in list(self._in_flight.values()):
            worker.cancel()
        await self._agent.close()

    def _observe(self, event: Event) -> None:
        self.wake()

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.timezone.utc)

    def wake(self) -> None:
        if not self.running:
            return
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True

        async def pump() -> None:
            try:
                while True:
                    self._pump_again = False
                    await self._pump()
                    if not self._pump_again:
                        break
            except Exception:
                self.log.failure("delivery scheduling failed; trying again in {seconds} s",
                                 seconds=STORE_RETRY_SECONDS)
                self._wake_later()
            finally:
                self._pumping = False

        self._pumper = Deferred.fromCoroutine(pump())

    def _wake_later(self) -> None:
        """Look at the outbox again after a failure, without spinning on it."""
        if self.running and (self._retry is None or not self._retry.active()):
            self._retry = self._reactor.callLater(STORE_RETRY_SECONDS, self.wake)

    async def _pump(self) -> None:
        room = self._settings.max_in_flight - len(self._in_flight)
        if room > 0:
            due = await self._store.deliveries.due_subscriptions(self.now(), room + len(self._in_flight))
            for subscription_id in due:
                if not self.running:
                    return
                if subscription_id in self._in_flight or len(self._in_flight) >= self._settings.max_in_flight:
                    continue
                worker = Deferred.fromCoroutine(self._drain(subscription_id))
                self._in_flight[subscription_id] = worker
                worker.addErrback(lambda f: f.trap(CancelledError))
        earliest = await self._store.deliveries.earliest_due()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if earliest is not None and self.running:
            delay = max(0.0, (earliest - self.now()).total_seconds())
            self._timer = self._reactor.callLater(max(delay, 0.01), self.wake)

    async def _drain(self, subscription_id: str) -> None:
        """Deliver a subscription's due deliveries in order; stop at the first failure."""
        failed = False
        try:
            while self.running:
                delivery = await self._store.deliveries.head(subscription_id)
                if delivery is None or delivery.next_attempt_at > self.now():
                    return
                if not await self._deliver(delivery):
                    return
        except CancelledError:
            raise
        except Exception:
            failed = True
            self.log.failure("delivering to subscription {subscription} failed; trying again "
                             "in {seconds} s", subscription=subscription_id,
                             seconds=STORE_RETRY_SECONDS)
        finally:
            self._in_flight.pop(subscription_id, None)
            if failed:
                self._wake_later()
            else:
                self.wake()

    async def _deliver(self, delivery) -> bool:
        sub = delivery.subscription
        fetch = self._config.fetch
        body = json.dumps(delivery.event.to_json(), separators=(",", ":")).encode()
        headers = {
            **signing.headers(sub.secret, delivery.event.id, body, now=self._reactor.seconds()),
            "Content-Type": "application/json",
            "User-Agent": f"KREE/{__version__}",
            "KREE-Subscription": sub.id,
        }
        try:
            checked = await urlguard.check_reachable(self._reactor, sub.url,
                                                     fetch.allowed_hosts,
                                                     fetch.allow_private_addresses)
            request = self._agent.request(
                b"POST", checked,
                Headers({k.encode(): [v.encode()] for k, v in headers.items()}),
                FileBodyProducer(BytesIO(body)))
            # A cancelled request fails with ResponseNeverReceived, not the
            # timeout: say what happened.
            request.addTimeout(self._settings.timeout_seconds, self._reactor,
                               onTimeoutCancel=timed_out)
            response = await request
            discard = DiscardBody()
            response.deliverBody(discard)
            await discard.done
            code = response.code
        except CancelledError:
            raise
        except urlguard.URLNotAllowed as e:
            code, error = None, e.message
        except TimeoutError:
            code, error = None, f"no answer within {self._settings.timeout_seconds} s"
        except Exception as e:
            code, error = None, f"{type(e).__name__}: {e}"
        if code is not None and 200 <= code < 300:
            await self._store.deliveries.delivered(delivery.id, sub.id)
            return True
        if code == 410:
            await self._store.deliveries.end_subscription(sub.id, "the listener answered 410 Gone")
            self.log.info("subscription {subscription} ended by its listener (410)",
                          subscription=sub.id)
            return False
        if code is not None:
            error = f"the listener answered {code}"
        schedule = self._settings.retry_schedule_seconds
        attempt = delivery.attempts  # failures so far, before this one
        retry_at = (self.now() + datetime.timedelta(seconds=schedule[attempt])
                    if attempt < len(schedule) else None)
        status = await self._store.deliveries.failed(delivery.id, sub.id, error, retry_at,
                                                     self._settings.failing_after)
        self.log.info("delivery of event {event} to {listener} failed ({error}); {next}",
                      event=delivery.event.id, listener=sub.url, error=error,
                      next="retry scheduled" if retry_at else "given up",
                      subscription_status=status)
        return retry_at is None  # a given-up delivery lets the next one go

