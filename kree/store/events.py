"""
The event log (also the outbox that kree.events delivers from).

Each job's events carry a C{seq} that grows by one with no gaps.  The next
seq is taken by incrementing C{jobs.last_seq} in the same transaction that
inserts the event: the UPDATE locks the job's row (PostgreSQL) or the
database (SQLite, BEGIN IMMEDIATE), so two writers can never take the same
seq or skip one, and a rolled-back transaction gives its seq back.
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from kree.errors import JobNotFound
from kree.records import Event
from kree.store import model


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def append_thd(
    conn: sa.Connection,
    job_id: str,
    type: str,
    data: dict,
    now: datetime.datetime | None = None,
) -> Event:
    """Append one event for C{job_id} inside the caller's transaction."""
    now = now or utcnow()
    jobs = model.jobs
    row = conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id)
        .values(last_seq=jobs.c.last_seq + 1)
        .returning(jobs.c.last_seq, jobs.c.frontend_id)
    ).one_or_none()
    if row is None:
        raise JobNotFound(job_id)
    seq, frontend_id = row
    event_id = conn.execute(
        model.events.insert().values(
            job_id=job_id, frontend_id=frontend_id, seq=seq, type=type, time=now, data=data
        )
    ).inserted_primary_key[0]
    _enqueue_deliveries(conn, frontend_id, job_id, type, event_id, now)
    return Event(event_id, job_id, frontend_id, seq, type, now, data)


def _enqueue_deliveries(conn, frontend_id: int, job_id: str, type: str, event_id: int,
                        now: datetime.datetime) -> None:
    """
    The outbox: one pending delivery per matching subscription, in the
    event's own transaction, so a committed event is never without its
    deliveries (kree.events sends them).
    """
    subs = model.subscriptions
    rows = conn.execute(
        sa.select(subs.c.id, subs.c.job_id, subs.c.event_types)
        .where(subs.c.frontend_id == frontend_id, subs.c.status != "ended")
    ).all()
    wanted = [
        sub_id for sub_id, sub_job, types in rows
        if (sub_job is None or sub_job == job_id) and (not types or type in types)
    ]
    if wanted:
        conn.execute(model.deliveries.insert(), [
            {"subscription_id": sub_id, "event_id": event_id, "status": "pending",
             "attempts": 0, "next_attempt_at": now}
            for sub_id in wanted
        ])


def _event(row) -> Event:
    return Event(row.id, row.job_id, row.frontend_id, row.seq, row.type, row.time, row.data)


class EventsStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def list_for_job(self, job_id: str, after: int = 0, limit: int = 100) -> list[Event]:
        """Events of one job with seq > C{after}, oldest first."""
        return await self._pool.run(self.list_for_job_thd, job_id, after, limit)

    def list_for_job_thd(self, conn, job_id: str, after: int = 0, limit: int = 100):
        ev = model.events
        rows = conn.execute(
            sa.select(ev)
            .where(ev.c.job_id == job_id, ev.c.seq > after)
            .order_by(ev.c.seq)
            .limit(limit)
        )
        return [_event(row) for row in rows]
