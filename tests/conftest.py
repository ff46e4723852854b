"""
Shared fixtures: real SQLite files and the real PostgreSQL server.

PostgreSQL tests use the server at $KREE_TEST_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), each test in a schema of
its own that is dropped afterwards.  They are skipped, with the reason, when
no server answers; with KREE_REQUIRE_POSTGRES=1 (as .ci/run sets) they fail
instead, so CI can never pass without running them.
"""

import os
import secrets

import pytest
import sqlalchemy as sa

from kree.store import Store, migrate

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_base_url() -> str:
    return os.environ.get("KREE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _postgres_unavailable(reason: str):
    if os.environ.get("KREE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (KREE_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(f"no PostgreSQL for this test: {reason}")


@pytest.fixture
def postgres_url():
    """A URL whose connections use a fresh, empty schema of their own."""
    base = postgres_base_url()
    schema = f"kree_test_{secrets.token_hex(6)}"
    try:
        # No pooled connection is kept: a test may restart the server meanwhile.
        admin = sa.create_engine(base, connect_args={"connect_timeout": 3},
                                 poolclass=sa.pool.NullPool)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except ImportError as e:
        _postgres_unavailable(f"the PostgreSQL driver is missing ({e})")
    except sa.exc.OperationalError as e:
        _postgres_unavailable(f"no server answers at {base} ({e.orig})")
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'kree.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def store_url(request):
    """Each test using this runs on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    """A started store at the newest revision, on the real reactor."""
    from twisted.internet import reactor

    store = Store.from_url(store_url, reactor)
    store.start()
    store.pool.run_in_thread(migrate.upgrade)
    yield store
    store.stop()


@pytest.fixture
def frontend(store):
    """A registered frontend in C{store}."""
    return store.pool.run_in_thread(store.frontends.add_thd, "portal", "ab" * 32, "CN=portal")


@pytest.fixture
def other_frontend(store):
    return store.pool.run_in_thread(store.frontends.add_thd, "gateway", "cd" * 32, "CN=gateway")


@pytest.fixture(scope="module")
def kree_server(tmp_path_factory):
    """
    One live kreed per test module, with frontends "portal" and "gateway".

    It runs one engine at a time, and a long job of the "holder" frontend
    occupies that slot for the whole module, so the jobs the tests queue stay
    QUEUED (the supervisor would otherwise run them at once).
    """
    from live import LiveKree, hold_the_queue, kill_active_jobs, wait_for_state

    server = LiveKree(tmp_path_factory.mktemp("kree"), frontends=("portal", "gateway", "holder"),
                      config_text=SUPERVISOR_ONE_SLOT).start()
    holder = hold_the_queue(server)
    yield server
    # Engines outlive kreed (it re-adopts them at its next start): kill every
    # job that could still get one before the held slot is freed.
    for name in ("portal", "gateway"):
        kill_active_jobs(server.client(name))
    holder.post(f"/v1/jobs/{holder.job_id}/kill")
    wait_for_state(holder, holder.job_id, "ABORTED")
    assert server.stop() == 0, server.log


SUPERVISOR_ONE_SLOT = """
[supervisor]
max_running = 1
stop_grace_seconds = 2
monitor_interval_seconds = 0.2
"""


@pytest.fixture
def side(postgres_url):
    """A PostgreSQL connection of the test's own, outside any pool, committing at once."""
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    yield conn
    conn.close()
    engine.dispose()


@pytest.fixture
def pool_log():
    """What the store's DB pool logs, as text."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines = []

    def observe(event):
        if event.get("log_namespace", "").startswith("kree.store.pool"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)
