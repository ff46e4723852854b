"""
The database thread pool: the reactor thread never waits on the database.

Thread-side functions take a SQLAlchemy connection inside an open transaction
and return plain values or attrs records, never rows.  L{DBPool.run} runs one
such function in one transaction on a pool thread and gives its result back
to the reactor as a Deferred.

SQLite gets exactly one thread: SQLite has one writer at a time anyway, and
one thread keeps the daemon from fighting itself for the lock.

Faults.  A transaction is run again only when that is safe:

 - SQLite answered "database is locked" (kree-admin writing at the same
   moment, for longer than the busy timeout): nothing was committed; up to
   L{RETRIES} more times.
 - PostgreSQL rolled the transaction back as the loser of a conflict with
   another: a deadlock (SQLSTATE 40P01) or a serialization failure (40001).
   Up to L{CONFLICT_RETRIES} more times, after a jittered exponential
   backoff (so that the two losers of one deadlock do not collide again),
   each logged.  The store's own writes take a job's row first (see
   L{kree.store.events}) and should not deadlock at all; this is for what
   is left (several jobs in one transaction, kree-admin, stricter isolation).
 - PostgreSQL could not be reached, or the connection broke before COMMIT was
   sent (a server restart, a failover): the server rolled the transaction
   back.  The pool tries again, with backoff, until the server answers or the
   caller's patience is spent: C{reconnect_seconds} ([store] in the
   configuration) for the daemon (L{run}), so a restart of the server is a
   pause for the daemon's background work, not a failure of it; none for
   L{run_in_thread} (kree-admin says at once that the database is down).
 - The connection broke while COMMIT was on its way: it may or may not have
   committed, and running it again could apply a change twice.  Just before
   COMMIT the pool takes the transaction's id (only if it wrote anything), and
   once the server answers again asks it (C{pg_xact_status}) what became of
   the transaction: committed, and the result stands; aborted, and it is run
   again.

What is left is raised: from L{run} as L{DatabaseUnavailable} (the API's 503)
when the database is out of reach or the conflicts went on, from
L{run_in_thread} as SQLAlchemy's error.

Running a transaction again means calling its function again, from the
start, on a new transaction: a thread-side function must therefore do
nothing but database work through its connection (no files, no messages, no
changes to objects outside it that a second run would repeat), and compute
anything that must not change between runs (ids, times) before it is
called.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, TypeVar

import sqlalchemy as sa
from twisted.internet.defer import maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from kree.errors import DatabaseUnavailable
from kree.store.engine import is_sqlite

T = TypeVar("T")

RETRIES = 5
RETRY_BACKOFF_SECONDS = 0.2
# How long the daemon's transactions wait for an unreachable PostgreSQL, by default.
RECONNECT_SECONDS = 10.0
RECONNECT_FIRST_DELAY_SECONDS = 0.1
RECONNECT_MAX_DELAY_SECONDS = 1.0
UNAVAILABLE = "the database is unavailable; try again shortly"
# Conflicts between transactions that PostgreSQL resolves by rolling one back.
CONFLICTS = {"40001": "serialization failure", "40P01": "deadlock"}
CONFLICT_RETRIES = 8
CONFLICT_FIRST_DELAY_SECONDS = 0.01
CONFLICT_MAX_DELAY_SECONDS = 0.5
CONFLICTED = ("the change conflicted with others made at the same time, again and again; "
              "try again shortly")


def _locked(error: Exception) -> bool:
    return isinstance(error, sa.exc.OperationalError) and "database is locked" in str(error)


def _conflict(error: Exception) -> str | None:
    """The SQLSTATE if the server rolled the transaction back over a conflict."""
    if not isinstance(error, sa.exc.DBAPIError):
        return None
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate if sqlstate in CONFLICTS else None


def conflict_delay(attempt: int) -> float:
    """
    Seconds to wait before retry C{attempt} (1, 2, ...) after a conflict:
    exponential, capped, and jittered over its upper half, so that the
    transactions of one deadlock come back at different moments.
    """
    ceiling = min(CONFLICT_MAX_DELAY_SECONDS, CONFLICT_FIRST_DELAY_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


class _NotRun(Exception):
    """The transaction did not happen: the database was out of reach, or the
    connection broke before COMMIT (the server rolls such a transaction back)."""

    def __init__(self, error: sa.exc.DBAPIError) -> None:
        super().__init__(str(error))
        self.error = error


class _CutOff(Exception):
    """The connection broke while committing a transaction that wrote (its id: xid)."""

    def __init__(self, error: sa.exc.DBAPIError, xid: str, result: Any) -> None:
        super().__init__(str(error))
        self.error = error
        self.xid = xid
        self.result = result


class _GaveUp(Exception):
    """The database stayed out of reach for as long as the caller would wait."""

    def __init__(self, error: sa.exc.DBAPIError, outcome_unknown: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.outcome_unknown = outcome_unknown


class DBPool:
    log = Logger()

    def __init__(self, engine: sa.Engine, reactor, threads: int = 4, *,
                 reconnect_seconds: float = RECONNECT_SECONDS) -> None:
        self.engine = engine
        self.reconnect_seconds = reconnect_seconds
        self._reactor = reactor
        self._sqlite = is_sqlite(engine.url)
        self._postgresql = engine.dialect.name == "postgresql"
        if self._sqlite:
            threads = 1
        self._threadpool = ThreadPool(minthreads=1, maxthreads=threads, name="kree-db")
        self._started = False
        self._stopping = False
        # Since when (monotonic) the database has been out of reach, to log
        # an outage once rather than once per transaction.
        self._outage_lock = threading.Lock()
        self._unreachable_since: float | None = None

    def start(self) -> None:
        if not self._started:
            self._stopping = False
            self._threadpool.start()
            self._started = True

    def stop(self) -> None:
        """Wait for running transactions, then close every connection."""
        self._stopping = True  # transactions waiting for the database give up
        if self._started:
            self._started = False
            self._threadpool.stop()
        self.engine.dispose()

    def run(self, fn: Callable[..., T], *args, **kwargs):
        """Run C{fn(conn, *args, **kwargs)} in one transaction on a pool thread."""
        if not self._started:
            raise RuntimeError("database pool is not started")
        deadline = time.monotonic() + self.reconnect_seconds
        d = deferToThreadPool(self._reactor, self._threadpool, self._run_until, deadline,
                              fn, args, kwargs)
        d.addErrback(self._unavailable)
        return d

    def run_in_thread(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """The thread side of L{run}, without waiting for an unreachable database;
        usable where there is no reactor (kree-admin)."""
        try:
            return self._run_until(time.monotonic(), fn, args, kwargs)
        except _GaveUp as e:
            raise e.error from None

    @staticmethod
    def _unavailable(failure):
        """The database's absence, in the daemon's terms."""
        error = failure.value
        if isinstance(error, _GaveUp):
            if error.outcome_unknown:
                raise DatabaseUnavailable(
                    "the connection to the database broke while a change was being committed, "
                    "and the database did not come back to say whether it was; check before "
                    "trying again", outcome="unknown") from error.error
            raise DatabaseUnavailable(UNAVAILABLE) from error.error
        if _conflict(error):
            raise DatabaseUnavailable(CONFLICTED) from error
        if isinstance(error, sa.exc.OperationalError):
            raise DatabaseUnavailable(UNAVAILABLE) from error
        return failure

    # -- the thread side ---------------------------------------------------------------

    def _run_until(self, deadline: float, fn, args, kwargs):
        """Run the transaction, again while that is safe and C{deadline} allows."""
        locked = cut_off = conflicts = 0
        delay = RECONNECT_FIRST_DELAY_SECONDS
        while True:
            try:
                result = self._transaction(fn, args, kwargs)
            except _CutOff as cut:
                if self._committed(cut, deadline):
                    result = cut.result
                elif cut_off == RETRIES:
                    raise _GaveUp(cut.error, outcome_unknown=False) from None
                else:
                    cut_off += 1
                    continue  # rolled back: run it again
            except _NotRun as e:
                remaining = deadline - time.monotonic()
                if self._sqlite or self._stopping or remaining <= 0:
                    raise _GaveUp(e.error, outcome_unknown=False) from None
                self._unreachable(e.error)
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, RECONNECT_MAX_DELAY_SECONDS)
                continue
            except sa.exc.DBAPIError as e:
                sqlstate = _conflict(e)
                if sqlstate is not None:
                    name = getattr(fn, "__qualname__", fn)
                    if conflicts == CONFLICT_RETRIES:
                        self.log.error("database transaction {fn} lost {attempts} conflicts "
                                       "({sqlstate} {conflict}) in a row; giving up", fn=name,
                                       attempts=conflicts + 1, sqlstate=sqlstate,
                                       conflict=CONFLICTS[sqlstate])
                        raise
                    conflicts += 1
                    pause = conflict_delay(conflicts)
                    self.log.warn("database transaction {fn} was rolled back ({sqlstate} "
                                  "{conflict}); retry {attempt} in {pause} s", fn=name,
                                  sqlstate=sqlstate, conflict=CONFLICTS[sqlstate],
                                  attempt=conflicts, pause=round(pause, 3))
                    time.sleep(pause)
                    continue
                if not _locked(e) or locked == RETRIES:
                    raise
                locked += 1
                self.log.warn("database transaction {fn} failed ({error}); retry {attempt}",
                              fn=getattr(fn, "__qualname__", fn), error=str(e.orig),
                              attempt=locked)
                time.sleep(RETRY_BACKOFF_SECONDS * (2 ** (locked - 1)))
                continue
            self._reachable()
            return result

    def _transaction(self, fn, args, kwargs):
        """One attempt; L{_NotRun} or L{_CutOff} when the connection failed it."""
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as e:
            if _locked(e):  # SQLite's pragmas at connect
                raise
            raise _NotRun(e) from e
        with conn:
            xid = None
            committing = False
            try:
                with conn.begin():
                    result = fn(conn, *args, **kwargs)
                    if self._postgresql:
                        xid = conn.exec_driver_sql(
                            "SELECT pg_current_xact_id_if_assigned()::text").scalar()
                    committing = True
            except sa.exc.DBAPIError as e:
                if not e.connection_invalidated:
                    raise
                if committing and not self._postgresql:
                    raise _GaveUp(e, outcome_unknown=True) from e
                if committing and xid is not None:
                    raise _CutOff(e, xid, result) from e
                raise _NotRun(e) from e  # nothing committed, or nothing to commit
            return result

    def _committed(self, cut: _CutOff, deadline: float) -> bool:
        """Whether the transaction cut off at COMMIT committed, as the server says."""
        self.log.warn("the connection broke while committing transaction {xid}; asking the "
                      "database what became of it", xid=cut.xid)
        delay = RECONNECT_FIRST_DELAY_SECONDS
        while True:
            try:
                with self.engine.connect() as conn:
                    status = conn.execute(sa.text("SELECT pg_xact_status(CAST(:xid AS xid8))"),
                                          {"xid": cut.xid}).scalar()
                    conn.rollback()
            except sa.exc.DBAPIError as e:
                if not e.connection_invalidated and not isinstance(e, sa.exc.OperationalError):
                    self.log.error("cannot learn the outcome of transaction {xid}: {error}",
                                   xid=cut.xid, error=str(e.orig))
                    raise _GaveUp(cut.error, outcome_unknown=True) from None
                status = "unreachable"
            if status == "committed":
                self.log.info("transaction {xid} had committed", xid=cut.xid)
                return True
            if status == "aborted":
                self.log.info("transaction {xid} had been rolled back; running it again",
                              xid=cut.xid)
                return False
            # "in progress" (the old session is still finishing) or unreachable.
            remaining = deadline - time.monotonic()
            if self._stopping or remaining <= 0:
                raise _GaveUp(cut.error, outcome_unknown=True)
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, RECONNECT_MAX_DELAY_SECONDS)

    def _unreachable(self, error: sa.exc.DBAPIError) -> None:
        with self._outage_lock:
            if self._unreachable_since is not None:
                return
            self._unreachable_since = time.monotonic()
        self.log.warn("database unreachable ({error}); waiting up to {seconds} s for it",
                      error=str(error.orig).strip(), seconds=self.reconnect_seconds)

    def _reachable(self) -> None:
        if self._unreachable_since is None:
            return
        with self._outage_lock:
            since, self._unreachable_since = self._unreachable_since, None
        if since is not None:
            self.log.info("database reachable again after {seconds} s",
                          seconds=round(time.monotonic() - since, 1))


class SynchronousDBPool(DBPool):
    """
    L{DBPool} without its thread, for tests driven by Twisted's C{Clock}:
    L{run} runs the transaction at once on the calling thread and answers an
    already-fired Deferred, so that such a test is deterministic, on a real
    database file, with the same transactions, retries and errors as the
    daemon's pool.  Never for the daemon: its reactor would wait on the
    database.
    """

    def start(self) -> None:
        self._stopping = False
        self._started = True

    def stop(self) -> None:
        self._stopping = True
        self._started = False
        self.engine.dispose()

    def run(self, fn: Callable[..., T], *args, **kwargs):
        """Run C{fn(conn, *args, **kwargs)} in one transaction, now."""
        if not self._started:
            raise RuntimeError("database pool is not started")
        deadline = time.monotonic() + self.reconnect_seconds
        d = maybeDeferred(self._run_until, deadline, fn, args, kwargs)
        d.addErrback(self._unavailable)
        return d
