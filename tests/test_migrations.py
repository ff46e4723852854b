"""
Alembic revisions on SQLite and PostgreSQL, and `kree-admin db`.
"""

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kree.store import migrate, model
from kree.store.engine import create_engine
from kree.store.pool import DBPool

ALL_TABLES = set(model.metadata.tables)


@pytest.fixture
def pool(store_url):
    pool = DBPool(create_engine(store_url), reactor=None)
    yield pool
    pool.stop()


def tables(pool):
    return set(pool.run_in_thread(lambda conn: sa.inspect(conn).get_table_names()))


def differences(pool):
    def compare(conn):
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, model.metadata)

    return pool.run_in_thread(compare)


def test_upgrade_from_empty_then_downgrade_to_base(pool):
    assert pool.run_in_thread(migrate.schema_status).state is migrate.SchemaState.FRESH
    pool.run_in_thread(migrate.upgrade)
    assert tables(pool) == ALL_TABLES | {"alembic_version"}
    status = pool.run_in_thread(migrate.schema_status)
    assert status.state is migrate.SchemaState.CURRENT
    assert status.current == (migrate.head_revision(),)
    pool.run_in_thread(migrate.downgrade, "base")
    assert tables(pool) <= {"alembic_version"}
    assert pool.run_in_thread(migrate.schema_status).state is migrate.SchemaState.FRESH


def test_model_matches_migrations(pool):
    pool.run_in_thread(migrate.upgrade)
    assert differences(pool) == []


def test_each_revision_steps_up_and_down(pool):
    pool.run_in_thread(migrate.upgrade, "0001")
    assert "actor_policies" not in tables(pool)
    status = pool.run_in_thread(migrate.schema_status)
    assert status.state is migrate.SchemaState.BEHIND
    assert "kree-admin db upgrade" in status.describe()
    with pytest.raises(Exception, match="behind"):
        status.require_current()
    pool.run_in_thread(migrate.upgrade, "0002")
    assert {"actor_policies", "software"} <= tables(pool)
    pool.run_in_thread(migrate.downgrade, "0001")
    assert not {"actor_policies", "software"} & tables(pool)


def test_unknown_databases_are_refused(pool):
    pool.run_in_thread(migrate.upgrade)
    pool.run_in_thread(
        lambda conn: conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00d'")
    )
    status = pool.run_in_thread(migrate.schema_status)
    assert status.state is migrate.SchemaState.UNKNOWN
    assert "newer KREE" in status.describe()
    # Tables without a revision: not ours to touch.
    pool.run_in_thread(lambda conn: conn.exec_driver_sql("DROP TABLE alembic_version"))
    status = pool.run_in_thread(migrate.schema_status)
    assert status.state is migrate.SchemaState.UNKNOWN
    assert "not a KREE database" in status.describe()
    with pytest.raises(Exception, match="not a KREE database"):
        pool.run_in_thread(migrate.prepare_for_daemon)


def test_prepare_for_daemon_creates_only_a_fresh_database(pool):
    status = pool.run_in_thread(migrate.prepare_for_daemon)
    assert status.state is migrate.SchemaState.CURRENT
    pool.run_in_thread(migrate.downgrade, "0001")
    with pytest.raises(Exception, match="behind"):
        pool.run_in_thread(migrate.prepare_for_daemon)
    # It did not upgrade by itself.
    assert pool.run_in_thread(migrate.schema_status).current == ("0001",)


def admin(url, tmp_path, *args):
    config = tmp_path / "admin.toml"
    config.write_text(f"[store]\nurl = {json.dumps(url)}\n")
    return subprocess.run(
        [sys.executable, "-m", "kree.admin", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kree_admin_db_commands(store_url, tmp_path):
    result = admin(store_url, tmp_path, "--json", "db", "current")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "fresh"

    result = admin(store_url, tmp_path, "db", "upgrade", "--revision", "0001")
    assert result.returncode == 0, result.stderr
    assert "upgraded from an empty database to 0001" in result.stdout

    result = admin(store_url, tmp_path, "--json", "db", "current")
    status = json.loads(result.stdout)
    assert status["state"] == "behind" and status["current"] == ["0001"]
    assert status["head"] == migrate.head_revision()

    result = admin(store_url, tmp_path, "db", "upgrade")
    assert result.returncode == 0 and "upgraded from 0001 to 0003" in result.stdout
    result = admin(store_url, tmp_path, "db", "upgrade")
    assert "nothing to do" in result.stdout

    result = admin(store_url, tmp_path, "db", "current")
    assert "up to date" in result.stdout

    result = admin(store_url, tmp_path, "db", "downgrade", "nonsense")
    assert result.returncode == 1
    assert "nonsense" in result.stderr and "Traceback" not in result.stderr

    result = admin(store_url, tmp_path, "--json", "db", "downgrade", "base")
    assert result.returncode == 0
    assert json.loads(result.stdout)["state"] == "fresh"


def test_kree_admin_usage_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kree.admin"], capture_output=True, text=True)
    assert result.returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nurl = 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "kree.admin", "--config", str(bad), "db", "current"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "store.url: must be str" in result.stderr


def test_kree_admin_reports_an_unreachable_database(tmp_path):
    result = admin("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path, "db", "current")
    assert result.returncode == 1
    assert "OperationalError" in result.stderr and "Traceback" not in result.stderr
