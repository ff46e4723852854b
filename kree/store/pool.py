"""
The database thread pool: the reactor thread never waits on the database.

Thread-side functions take a SQLAlchemy connection inside an open transaction
and return plain values or attrs records, never rows.  L{DBPool.run} runs one
such function in one transaction on a pool thread and gives its result back
to the reactor as a Deferred.

SQLite gets exactly one thread: SQLite has one writer at a time anyway, and
one thread keeps the daemon from fighting itself for the lock.  A transaction
that still meets "database is locked" (kree-admin writing at the same moment,
longer than the busy timeout) or a connection lost under it (a PostgreSQL
restart) is run again: a transaction that failed was rolled back, so running
the function again is safe.
"""

import time
from typing import Callable, TypeVar

import sqlalchemy as sa
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from kree.store.engine import is_sqlite

T = TypeVar("T")

RETRIES = 5
RETRY_BACKOFF_SECONDS = 0.2


def _retryable(error: sa.exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    return isinstance(error, sa.exc.OperationalError) and "database is locked" in str(error)


class DBPool:
    log = Logger()

    def __init__(self, engine: sa.Engine, reactor, threads: int = 4) -> None:
        self.engine = engine
        self._reactor = reactor
        if is_sqlite(engine.url):
            threads = 1
        self._threadpool = ThreadPool(minthreads=1, maxthreads=threads, name="kree-db")
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._threadpool.start()
            self._started = True

    def stop(self) -> None:
        """Wait for running transactions, then close every connection."""
        if self._started:
            self._threadpool.stop()
            self._started = False
        self.engine.dispose()

    def run(self, fn: Callable[..., T], *args, **kwargs):
        """Run C{fn(conn, *args, **kwargs)} in one transaction on a pool thread."""
        if not self._started:
            raise RuntimeError("database pool is not started")
        return deferToThreadPool(
            self._reactor, self._threadpool, self.run_in_thread, fn, *args, **kwargs
        )

    def run_in_thread(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """The thread side of L{run}; also usable where there is no reactor."""
        for attempt in range(RETRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return fn(conn, *args, **kwargs)
            except sa.exc.DBAPIError as e:
                if attempt == RETRIES or not _retryable(e):
                    raise
                self.log.warn(
                    "database transaction {fn} failed ({error}); retry {attempt}",
                    fn=getattr(fn, "__qualname__", fn),
                    error=str(e.orig),
                    attempt=attempt + 1,
                )
                time.sleep(RETRY_BACKOFF_SECONDS * (2**attempt))
        raise AssertionError("unreachable")
