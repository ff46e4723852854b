"""
The daemon's service tree.

L{KreeDaemon} is a MultiService whose children start one after another, in
dependency order, each awaited before the next; they stop in reverse order
(the API first, the store last), as Buildbot's AsyncMultiService does.
Each child gets the reactor injected; only kree.daemon passes the global one.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from kree import __version__
from kree.config import Config
from kree.jobs import JobService
from kree.store import Store


class AsyncMultiService(MultiService):
    """Start children in order, stop them in reverse, awaiting each."""

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start_children())

    async def _start_children(self) -> None:
        for child in list(self):
            await maybeDeferred(child.startService)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if child.running:
                await maybeDeferred(child.stopService)


class StoreService(Service):
    """Opens the store and makes sure its schema is the one this KREE needs."""

    log = Logger()

    def __init__(self, store: Store) -> None:
        self.store = store

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.store.start()
        status = await self.store.prepare_for_daemon()
        self.log.info("store {url}: {status}", url=self.store.url, status=status.describe())

    def stopService(self) -> None:
        Service.stopService(self)
        # Joins the DB thread; at this point only the tail of the last
        # transaction can still be running.
        self.store.stop()


class KreeDaemon(AsyncMultiService):
    log = Logger()

    def __init__(self, config: Config, reactor) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.started_at = reactor.seconds()
        self.store = Store.from_url(
            config.store_url,
            reactor,
            sqlite_synchronous=config.store.sqlite_synchronous,
            pool_size=config.store.pool_size,
        )
        StoreService(self.store).setServiceParent(self)
        self.jobs = JobService(self.store, reactor, config.jobs_dir)

    def startService(self) -> Deferred:
        self.log.info(
            "kreed {version} starting: state directory {state_dir}",
            version=__version__,
            state_dir=str(self.config.state_dir),
        )
        return super().startService()
