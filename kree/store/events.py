"""
The event log (also the outbox that kree.events delivers from).

Each job's events carry a C{seq} that grows by one with no gaps.  The next
seq is taken by incrementing C{jobs.last_seq} in the same transaction that
inserts the event, with the job's row locked (PostgreSQL) or the database
(SQLite, BEGIN IMMEDIATE), so two writers can never take the same seq or
skip one, and a rolled-back transaction gives its seq back.

Lock order.  Every transaction that writes anything of a job (its row, its
parameters, inputs, messages or events) first locks the job's row with
L{lock_job_thd} (SELECT ... FOR UPDATE on PostgreSQL), and only then writes.
Without that, one writer could hold a weaker lock on the row (the KEY SHARE
that inserting a message takes through its foreign key, or the UPDATE of
C{last_seq}) and then ask for a stronger one while another writer waits for
the row: a deadlock.  With the row taken first, in its strongest mode,
writers of one job simply queue.  A transaction on several jobs should lock
them in order of job id (L{lock_jobs_thd}); any deadlock left (or a
serialization failure) is rolled back by the server and run again by the
pool (L{kree.store.pool}).  On SQLite, BEGIN IMMEDIATE takes the database's
write lock up front and there is nothing more to take.
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from kree.errors import JobNotFound
from kree.records import Event
from kree.store import model


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# Per connection: the transaction that locked job rows, and which rows.
_LOCKED = "kree_locked_jobs"


def _locked_here(conn: sa.Connection) -> set[str]:
    """The jobs whose rows this transaction has locked already."""
    transaction = conn.get_transaction()
    memo = conn.info.get(_LOCKED)
    if memo is None or memo[0] is not transaction:
        # Holding the transaction object keeps a later one from reusing its
        # identity; a new transaction (a retry, say) starts with none locked.
        memo = conn.info[_LOCKED] = (transaction, set())
    return memo[1]


def lock_job_thd(conn: sa.Connection, job_id: str, frontend_id: int | None = None,
                 columns=None):
    """
    Lock the row of job C{job_id} for the rest of the caller's transaction
    (SELECT ... FOR UPDATE; on SQLite the transaction holds the database's
    write lock already) and return it (all of it, or only C{columns}), or
    None if there is no such job (for C{frontend_id}).  The first thing every
    write on a job does.
    """
    jobs = model.jobs
    query = sa.select(*(columns or (jobs,))).where(jobs.c.id == job_id)
    if frontend_id is not None:
        query = query.where(jobs.c.frontend_id == frontend_id)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    if row is not None:
        _locked_here(conn).add(job_id)
    return row


def ensure_job_locked_thd(conn: sa.Connection, job_id: str) -> bool:
    """
    L{lock_job_thd} unless this transaction holds the row already (one
    round trip saved per event when a transaction writes many); whether the
    job exists.
    """
    if conn.dialect.name == "sqlite":
        return True  # BEGIN IMMEDIATE: the whole database is ours already
    if job_id in _locked_here(conn):
        return True
    return lock_job_thd(conn, job_id) is not None


def hold_new_job_thd(conn: sa.Connection, job_id: str) -> None:
    """
    The row of a job this transaction has just inserted: no one else can
    see it, let alone lock it, before the commit, so it counts as locked.
    """
    _locked_here(conn).add(job_id)


def lock_jobs_thd(conn: sa.Connection, job_ids) -> set[str]:
    """
    Lock the rows of several jobs at once, in order of job id, so that two
    transactions on overlapping sets of jobs queue instead of deadlocking;
    the ids of those that exist.
    """
    wanted = sorted(set(job_ids))
    if not wanted:
        return set()
    jobs = model.jobs
    query = sa.select(jobs.c.id).where(jobs.c.id.in_(wanted)).order_by(jobs.c.id)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    found = {job_id for (job_id,) in conn.execute(query)}
    if conn.dialect.name != "sqlite":
        _locked_here(conn).update(found)
    return found


def append_thd(
    conn: sa.Connection,
    job_id: str,
    type: str,
    data: dict,
    now: datetime.datetime | None = None,
) -> Event:
    """
    Append one event for C{job_id} inside the caller's transaction, locking
    the job's row first unless the transaction has already.

    @raise JobNotFound: no such job (nothing written).
    """
    now = now or utcnow()
    jobs = model.jobs
    if not ensure_job_locked_thd(conn, job_id):
        raise JobNotFound(job_id)
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
