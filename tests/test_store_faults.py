"""
The DB pool when the connection to PostgreSQL breaks, at each moment of a
transaction, on the real server: before the commit (run again), during the
commit before the server committed (asked, then run again), during the
commit after the server committed (asked, and the result kept: never run
twice), and a server out of reach for longer than the pool waits.

The transaction used is the real one registering a frontend: running it
twice would fail with Conflict, so a change applied twice cannot pass.
Connections are broken for real: the server ends the session
(pg_terminate_backend), or a TCP relay between the pool and the server drops
the server's answer to COMMIT.
"""

import socket
import threading
import time

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor

from kree.errors import DatabaseUnavailable
from kree.store import migrate
from kree.store.engine import create_engine
from kree.store.frontends import FrontendsStore
from kree.store.pool import DBPool

pytestmark = pytest.mark.postgresql

FINGERPRINT = "ab" * 32


@pytest.fixture
def pool(postgres_url):
    pool = DBPool(create_engine(postgres_url), reactor)
    pool.start()
    pool.run_in_thread(migrate.upgrade)
    yield pool
    pool.stop()


def terminate(side, pid: int) -> None:
    """End the server session C{pid} and wait until it is gone."""
    side.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 10
    while side.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                       {"pid": pid}).scalar():
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.01)


def registering(calls: list, before_return=None):
    """The frontend-registering transaction, counting its runs."""
    frontends = FrontendsStore(None)

    def add(conn):
        calls.append(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        frontend = frontends.add_thd(conn, "portal", FINGERPRINT, "CN=portal")
        if before_return is not None and len(calls) == 1:
            before_return(conn)
        return frontend

    return add


def frontends_in(pool) -> list[str]:
    return [f.name for f in pool.run_in_thread(FrontendsStore(pool).list_thd)]


@pytest_twisted.ensureDeferred
async def test_connection_lost_inside_a_transaction_runs_it_again(pool, side):
    calls = []

    def lose_the_connection(conn):
        terminate(side, calls[0])
        conn.exec_driver_sql("SELECT 1")  # fails: the session is gone

    frontend = await pool.run(registering(calls, lose_the_connection))
    assert frontend.name == "portal"
    assert len(calls) == 2 and calls[0] != calls[1]
    assert frontends_in(pool) == ["portal"]


@pytest_twisted.ensureDeferred
async def test_connection_lost_as_commit_goes_out_asks_and_runs_it_again(pool, side, pool_log):
    calls = []
    armed = []

    @sa.event.listens_for(pool.engine, "commit")
    def before_commit(conn):
        # Called as the pool commits, just before COMMIT is sent.
        if armed:
            armed.clear()
            terminate(side, calls[0])

    frontend = await pool.run(registering(calls, lambda conn: armed.append(True)))
    assert frontend.name == "portal"
    assert len(calls) == 2  # the server said the first one had rolled back
    assert any("had been rolled back; running it again" in line for line in pool_log), pool_log
    assert frontends_in(pool) == ["portal"]


class CommitCutter:
    """
    A TCP relay to the PostgreSQL server that, when armed, passes the next
    message on (the COMMIT), waits for the server's answer, and then closes
    both sides instead of passing the answer back: the server committed, the
    client never hears it.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = False
        self.cuts = 0
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            connection = {"swallow": False}
            threading.Thread(target=self._up, args=(client, server, connection),
                             daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, connection),
                             daemon=True).start()

    def _up(self, client, server, connection) -> None:
        try:
            while data := client.recv(65536):
                if self.armed:
                    self.armed = False
                    connection["swallow"] = True
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)

    def _down(self, server, client, connection) -> None:
        try:
            while data := server.recv(65536):
                if connection["swallow"]:
                    self.cuts += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def close(self) -> None:
        self._closing.set()
        self.listener.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest_twisted.ensureDeferred
async def test_connection_lost_after_the_server_committed_keeps_the_result(postgres_url, pool,
                                                                          pool_log):
    url = sa.make_url(postgres_url)
    cutter = CommitCutter(url.host or "127.0.0.1", url.port or 5432)
    relayed = url.set(host="127.0.0.1", port=cutter.port).update_query_dict(
        {"sslmode": "disable"})  # the relay must see the protocol's messages
    through = DBPool(create_engine(relayed.render_as_string(hide_password=False)), reactor)
    through.start()
    calls, commits = [], []

    @sa.event.listens_for(through.engine, "commit")
    def before_commit(conn):
        if not commits:  # the first COMMIT only
            commits.append(True)
            cutter.armed = True

    try:
        frontend = await through.run(registering(calls))
    finally:
        through.stop()
        cutter.close()
    assert cutter.cuts == 1  # the server's answer to COMMIT was lost
    assert frontend.name == "portal" and len(calls) == 1  # not run twice
    assert any("had committed" in line for line in pool_log), pool_log
    assert frontends_in(pool) == ["portal"]


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_is_waited_for_then_unavailable():
    pool = DBPool(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), reactor,
                  reconnect_seconds=0.5)
    pool.start()
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            await pool.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
        assert 0.5 <= time.monotonic() - started < 5
        assert info.value.status == 503 and info.value.code == "database_unavailable"
        # Without a reactor (kree-admin) nobody waits, and SQLAlchemy's error says why.
        with pytest.raises(sa.exc.OperationalError):
            pool.run_in_thread(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
    finally:
        pool.stop()
