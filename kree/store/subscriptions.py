"""Callback subscriptions of frontends (delivery itself is kree.events)."""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from kree.errors import KreeError
from kree.records import Subscription
from kree.store import model
from kree.store.events import utcnow


class SubscriptionNotFound(KreeError):
    status = 404
    code = "subscription_not_found"

    def __init__(self, subscription_id: str) -> None:
        super().__init__(f"no subscription {subscription_id!r}", subscription=subscription_id)


def _subscription(row) -> Subscription:
    return Subscription(
        row.id, row.frontend_id, row.url, row.job_id, row.event_types, row.secret,
        row.created_at, row.status, row.consecutive_failures, row.last_error, row.ended_at,
    )


class SubscriptionsStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def add(self, **kwargs) -> Subscription:
        return await self._pool.run(self.add_thd, **kwargs)

    def add_thd(self, conn, *, subscription_id: str, frontend_id: int, url: str, secret: str,
                job_id: str | None = None, event_types: list[str] | None = None,
                now: datetime.datetime | None = None) -> Subscription:
        conn.execute(model.subscriptions.insert().values(
            id=subscription_id, frontend_id=frontend_id, url=url, job_id=job_id,
            event_types=event_types, secret=secret, created_at=now or utcnow(),
        ))
        return self.get_thd(conn, subscription_id)

    async def get(self, subscription_id: str, frontend_id: int | None = None) -> Subscription:
        return await self._pool.run(self.get_thd, subscription_id, frontend_id)

    def get_thd(self, conn, subscription_id: str, frontend_id: int | None = None):
        subs = model.subscriptions
        query = sa.select(subs).where(subs.c.id == subscription_id)
        if frontend_id is not None:
            query = query.where(subs.c.frontend_id == frontend_id)
        row = conn.execute(query).one_or_none()
        if row is None:
            raise SubscriptionNotFound(subscription_id)
        return _subscription(row)

    async def list(self, frontend_id: int | None = None) -> list[Subscription]:
        return await self._pool.run(self.list_thd, frontend_id)

    def list_thd(self, conn, frontend_id: int | None = None) -> list[Subscription]:
        subs = model.subscriptions
        query = sa.select(subs).order_by(subs.c.created_at, subs.c.id)
        if frontend_id is not None:
            query = query.where(subs.c.frontend_id == frontend_id)
        return [_subscription(row) for row in conn.execute(query)]

    async def delete(self, subscription_id: str, frontend_id: int | None = None) -> None:
        return await self._pool.run(self.delete_thd, subscription_id, frontend_id)

    def delete_thd(self, conn, subscription_id: str, frontend_id: int | None = None) -> None:
        self.get_thd(conn, subscription_id, frontend_id)
        conn.execute(model.subscriptions.delete().where(model.subscriptions.c.id == subscription_id))
