"""
Delivery backoff, driven by the clock: the real DeliveryService, job service
and store (a SQLite file through the synchronous DB pool), and the real
PinnedAgent on Twisted's MemoryReactorClock (tests/clocked.py), where the test refuses or
answers each connection the agent makes.  The live tests (test_events.py)
keep real listeners over real TLS.
"""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kree.config import load_config
from kree.events import DeliveryService
from kree.jobs import JobService
from clocked import Reactor, fired, run, synchronous_store

LISTENER = "http://127.0.0.1:8999/hook"


class Outbox:
    def __init__(self, tmp_path, schedule: list[float]) -> None:
        self.reactor = reactor = Reactor()
        config = load_config(state_dir=tmp_path / "state", environ={})
        self.config = attrs.evolve(
            config, events=attrs.evolve(config.events, retry_schedule_seconds=schedule),
            fetch=attrs.evolve(config.fetch, allow_private_addresses=True))
        self.store = synchronous_store(tmp_path / "kree.db", reactor)
        self.frontend = self.store.pool.run_in_thread(
            self.store.frontends.add_thd, "portal", "ab" * 32, "CN=portal").id
        self.store.pool.run_in_thread(
            self.store.subscriptions.add_thd, subscription_id="sub_one",
            frontend_id=self.frontend, url=LISTENER, secret="s3cret")
        self.jobs = JobService(self.store, reactor, self.config.jobs_dir)
        self.service = DeliveryService(self.config, self.store, self.jobs, reactor)
        self.service.startService()
        self.answered = 0

    def new_job(self) -> None:
        run(self.jobs.create(self.frontend, "kree:workflow/" + "cd" * 32))

    @property
    def attempts(self) -> int:
        """Connections the agent has tried to make to the listener."""
        return len(self.reactor.tcpClients)

    def refuse(self) -> None:
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        assert (host, port) == ("127.0.0.1", 8999)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def answer(self, status: int) -> bytes:
        """Accept the last connection, answer C{status}; what was sent."""
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8999))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        return transport.value()

    def counts(self):
        return run(self.store.deliveries.counts())

    def close(self) -> None:
        fired(self.service.stopService())
        self.store.stop()


@pytest.fixture
def outbox(tmp_path):
    made = []

    def make(schedule):
        made.append(Outbox(tmp_path, schedule))
        return made[-1]

    yield make
    for outbox in made:
        outbox.close()


def test_a_refused_delivery_is_retried_on_the_schedule_then_given_up(outbox):
    box = outbox([10, 60])
    box.new_job()
    assert box.attempts == 1
    box.refuse()
    box.reactor.advance(9.9)
    assert box.attempts == 1
    box.reactor.advance(0.2)
    assert box.attempts == 2
    box.refuse()
    box.reactor.advance(59.9)
    assert box.attempts == 2
    box.reactor.advance(0.2)
    assert box.attempts == 3
    box.refuse()  # the schedule is used up: given up
    box.reactor.advance(86400)
    assert box.attempts == 3
    assert box.counts() == {"sub_one": {"dead": 1}}


def test_a_retry_that_is_answered_is_not_repeated_and_the_next_event_follows(outbox):
    box = outbox([10])
    box.new_job()
    box.refuse()
    box.reactor.advance(10.1)
    assert box.attempts == 2
    sent = box.answer(200).lower()
    assert sent.startswith(b"post /hook http/1.1") and b"kree-signature: v1=" in sent
    assert b"kree-timestamp: 1800000010" in sent  # sent when the retry was due
    assert box.counts() == {"sub_one": {"delivered": 1}}
    box.reactor.advance(3600)
    assert box.attempts == 2
    box.new_job()
    assert box.attempts == 3  # at once: no backoff after a success
