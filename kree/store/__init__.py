"""
The store: the only part of KREE that knows SQL.

L{Store} bundles the engine, the DB thread pool and one component per group
of tables.  Component methods come in pairs: C{name(...)} is awaited on the
reactor and runs C{name_thd(conn, ...)} in one transaction on the pool's
thread; C{*_thd} functions can be combined into one transaction by a caller
that is already on the pool thread.
"""

from __future__ import annotations

import sqlalchemy as sa

from kree.store import migrate
from kree.store.audit import AuditStore
from kree.store.cache import CacheStore
from kree.store.deliveries import DeliveriesStore
from kree.store.engine import create_engine
from kree.store.events import EventsStore
from kree.store.frontends import FrontendsStore
from kree.store.jobs import JobsStore
from kree.store.ownership import OwnershipStore
from kree.store.policies import PoliciesStore
from kree.store.pool import RECONNECT_SECONDS, DBPool
from kree.store.subscriptions import SubscriptionsStore


class Store:
    def __init__(self, engine: sa.Engine, reactor, threads: int = 4,
                 reconnect_seconds: float = RECONNECT_SECONDS, *,
                 pool: DBPool | None = None) -> None:
        """@param pool: the caller's (tests: L{kree.store.pool.SynchronousDBPool})."""
        self.engine = engine
        self.pool = pool or DBPool(engine, reactor, threads, reconnect_seconds=reconnect_seconds)
        self.jobs = JobsStore(self.pool)
        self.events = EventsStore(self.pool)
        self.frontends = FrontendsStore(self.pool)
        self.subscriptions = SubscriptionsStore(self.pool)
        self.cache = CacheStore(self.pool)
        self.audit = AuditStore(self.pool)
        self.policies = PoliciesStore(self.pool)
        self.deliveries = DeliveriesStore(self.pool)
        self.ownership = OwnershipStore(self.pool)

    @classmethod
    def from_url(cls, url: str, reactor, *, sqlite_synchronous="full", pool_size=4,
                 reconnect_seconds: float = RECONNECT_SECONDS) -> Store:
        engine = create_engine(url, sqlite_synchronous=sqlite_synchronous, pool_size=pool_size)
        return cls(engine, reactor, threads=pool_size, reconnect_seconds=reconnect_seconds)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()

    async def prepare_for_daemon(self) -> migrate.SchemaStatus:
        """See L{migrate.prepare_for_daemon}; runs on the pool thread."""
        return await self.pool.run(migrate.prepare_for_daemon)

    async def schema_status(self) -> migrate.SchemaStatus:
        return await self.pool.run(migrate.schema_status)
