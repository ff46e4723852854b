"""
Creating the SQLAlchemy engine for SQLite or PostgreSQL.

SQLite (the embedded default) is set up for one daemon plus an occasional
second writer (kree-admin):

 - WAL, so readers never wait for the writer;
 - foreign keys on (SQLite leaves them off by default);
 - every transaction starts with BEGIN IMMEDIATE, so a transaction that reads
   and then writes takes the write lock up front and never fails half-way
   with "database is locked" on the upgrade from reader to writer;
 - a busy timeout, so a second writer waits instead of failing at once;
 - C{synchronous} from the configuration: FULL by default (a commit survives
   power loss), or NORMAL (about five times faster, but in WAL mode the last
   commits can be lost on power loss; never on a crash of the process).

PostgreSQL gets pre-ping, so connections broken by a server restart are
replaced instead of failing the next transaction, and a connect timeout (unless
the URL sets one), so a server that does not answer at all costs a pool thread
seconds, not the minutes of the system's TCP timeout.  What the pool does when
the server is away is in L{kree.store.pool}.
"""

import sqlalchemy as sa

SQLITE_BUSY_TIMEOUT_SECONDS = 30
POSTGRESQL_CONNECT_TIMEOUT_SECONDS = 5


def redacted_url(url: str) -> str:
    """The URL without its password, for people to read; ValueError if malformed."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError as e:
        raise ValueError(str(e)) from None


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, sqlite_synchronous: str = "full", pool_size: int = 4) -> sa.Engine:
    if is_sqlite(url):
        return _create_sqlite_engine(url, sqlite_synchronous)
    connect_args = {}
    if "connect_timeout" not in sa.make_url(url).query:
        connect_args["connect_timeout"] = POSTGRESQL_CONNECT_TIMEOUT_SECONDS
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=0, future=True,
        connect_args=connect_args,
    )


def _create_sqlite_engine(url: str, synchronous: str) -> sa.Engine:
    if synchronous.upper() not in ("NORMAL", "FULL"):
        raise ValueError(f"sqlite synchronous must be normal or full, not {synchronous!r}")
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record):
        # Take transaction control away from the sqlite3 module, so that the
        # "begin" hook below decides how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
