"""
Pending callback deliveries (the outbox that kree.events drains).

Each subscription's deliveries go out one at a time, oldest event first, so
a listener sees each job's events in seq order; a delivery that fails keeps
its place (and holds up later ones of the same subscription only) until it
succeeds, its retry schedule is used up, or the listener ends the
subscription with 410.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs
import sqlalchemy as sa

from kree.records import Event, Subscription
from kree.store import model
from kree.store.events import utcnow
from kree.store.subscriptions import _subscription


@attrs.frozen
class Delivery:
    id: int
    attempts: int
    next_attempt_at: datetime.datetime
    subscription: Subscription
    event: Event


class DeliveriesStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def due_subscriptions(self, now: datetime.datetime, limit: int) -> list[str]:
        return await self._pool.run(self.due_subscriptions_thd, now, limit)

    def due_subscriptions_thd(self, conn, now: datetime.datetime, limit: int) -> list[str]:
        d = model.deliveries
        rows = conn.execute(
            sa.select(d.c.subscription_id)
            .where(d.c.status == "pending", d.c.next_attempt_at <= now)
            .group_by(d.c.subscription_id)
            .order_by(sa.func.min(d.c.id))
            .limit(limit))
        return [row[0] for row in rows]

    async def earliest_due(self) -> datetime.datetime | None:
        return await self._pool.run(self.earliest_due_thd)

    def earliest_due_thd(self, conn) -> datetime.datetime | None:
        d = model.deliveries
        value = conn.execute(sa.select(sa.func.min(d.c.next_attempt_at))
                             .where(d.c.status == "pending")).scalar()
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)  # min() bypasses the type
        return value

    async def head(self, subscription_id: str) -> Delivery | None:
        return await self._pool.run(self.head_thd, subscription_id)

    def head_thd(self, conn, subscription_id: str) -> Delivery | None:
        """The oldest pending delivery of a subscription, due or not."""
        d, e, s = model.deliveries, model.events, model.subscriptions
        row = conn.execute(
            sa.select(d.c.id.label("delivery_id"), d.c.attempts, d.c.next_attempt_at,
                      e.c.id.label("event_id"), e.c.job_id, e.c.frontend_id, e.c.seq, e.c.type,
                      e.c.time, e.c.data)
            .join(e, e.c.id == d.c.event_id).join(s, s.c.id == d.c.subscription_id)
            .where(d.c.subscription_id == subscription_id, d.c.status == "pending",
                   s.c.status != "ended")
            .order_by(d.c.id).limit(1)
        ).one_or_none()
        if row is None:
            return None
        sub = _subscription(conn.execute(sa.select(s).where(s.c.id == subscription_id)).one())
        event = Event(row.event_id, row.job_id, row.frontend_id, row.seq, row.type, row.time,
                      row.data)
        return Delivery(row.delivery_id, row.attempts, row.next_attempt_at, sub, event)

    async def delivered(self, delivery_id: int, subscription_id: str) -> None:
        await self._pool.run(self.delivered_thd, delivery_id, subscription_id)

    def delivered_thd(self, conn, delivery_id: int, subscription_id: str,
                      now: datetime.datetime | None = None) -> None:
        now = now or utcnow()
        d, s = model.deliveries, model.subscriptions
        conn.execute(d.update().where(d.c.id == delivery_id).values(
            status="delivered", delivered_at=now, last_attempt_at=now, attempts=d.c.attempts + 1))
        conn.execute(s.update().where(s.c.id == subscription_id, s.c.status != "ended").values(
            status="active", consecutive_failures=0))

    async def failed(self, delivery_id: int, subscription_id: str, error: str,
                     retry_at: datetime.datetime | None, failing_after: int) -> str:
        return await self._pool.run(self.failed_thd, delivery_id, subscription_id, error,
                                    retry_at, failing_after)

    def failed_thd(self, conn, delivery_id: int, subscription_id: str, error: str,
                   retry_at: datetime.datetime | None, failing_after: int,
                   now: datetime.datetime | None = None) -> str:
        """
        Record a failed attempt: retry at C{retry_at}, or give the delivery
        up (None).  The subscription's status afterwards.
        """
        now = now or utcnow()
        d, s = model.deliveries, model.subscriptions
        values: dict[str, Any] = dict(attempts=d.c.attempts + 1, last_attempt_at=now,
                                      last_error=error[:2000])
        if retry_at is None:
            values["status"] = "dead"
        else:
            values["next_attempt_at"] = retry_at
        conn.execute(d.update().where(d.c.id == delivery_id).values(**values))
        conn.execute(s.update().where(s.c.id == subscription_id).values(
            consecutive_failures=s.c.consecutive_failures + 1, last_error=error[:2000]))
        conn.execute(s.update().where(s.c.id == subscription_id, s.c.status == "active",
                                      s.c.consecutive_failures >= failing_after)
                     .values(status="failing"))
        return conn.execute(sa.select(s.c.status).where(s.c.id == subscription_id)).scalar_one()

    async def end_subscription(self, subscription_id: str, reason: str) -> None:
        await self._pool.run(self.end_subscription_thd, subscription_id, reason)

    def end_subscription_thd(self, conn, subscription_id: str, reason: str,
                             now: datetime.datetime | None = None) -> None:
        """The listener said 410 Gone: no more deliveries for this subscription."""
        now = now or utcnow()
        d, s = model.deliveries, model.subscriptions
        conn.execute(s.update().where(s.c.id == subscription_id).values(
            status="ended", ended_at=now, last_error=reason))
        conn.execute(d.update().where(d.c.subscription_id == subscription_id,
                                      d.c.status == "pending").values(status="dead"))

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self._pool.run(self.counts_thd)

    def counts_thd(self, conn) -> dict[str, dict[str, int]]:
        """Deliveries by subscription and status (for kree-admin)."""
        d = model.deliveries
        out: dict[str, dict[str, int]] = {}
        for sub_id, status, count in conn.execute(
                sa.select(d.c.subscription_id, d.c.status, sa.func.count())
                .group_by(d.c.subscription_id, d.c.status)):
            out.setdefault(sub_id, {})[status] = count
        return out
