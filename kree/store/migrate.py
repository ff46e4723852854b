"""
Schema migrations (alembic) and the daemon's check that the database is
where this version of KREE expects it.

These functions block: the daemon runs them on the DB pool's thread, and
kree-admin (a short-lived command) calls them directly.
"""

from __future__ import annotations

import enum
from importlib import resources

import attrs
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from kree.errors import DatabaseBehind, DatabaseUnknown
from kree.store import model


def migrations_dir() -> str:
    return str(resources.files("kree.migrations"))


def alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", migrations_dir())
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class SchemaState(enum.Enum):
    FRESH = "fresh"  # no KREE tables at all: safe to create
    CURRENT = "current"  # at this KREE's head revision
    BEHIND = "behind"  # at an older revision this KREE knows
    UNKNOWN = "unknown"  # a revision this KREE does not know, or tables without a revision


@attrs.frozen
class SchemaStatus:
    state: SchemaState
    current: tuple[str, ...]
    head: str

    def describe(self) -> str:
        current = ", ".join(self.current) or "none"
        if self.state is SchemaState.CURRENT:
            return f"database at revision {current} (up to date)"
        if self.state is SchemaState.FRESH:
            return "database is empty"
        if self.state is SchemaState.BEHIND:
            return (
                f"database is behind: at revision {current}, this KREE needs {self.head}; "
                "run `kree-admin db upgrade`"
            )
        if not self.current:
            return (
                "database has tables but no KREE revision: it is not a KREE database, "
                "or its alembic_version table was lost"
            )
        return (
            f"database at revision {current}, which this KREE (head {self.head}) does not know: "
            "is it from a newer KREE?"
        )

    def require_current(self) -> None:
        if self.state is SchemaState.BEHIND:
            raise DatabaseBehind(self.describe(), current=list(self.current), head=self.head)
        if self.state is SchemaState.UNKNOWN:
            raise DatabaseUnknown(self.describe(), current=list(self.current), head=self.head)


def schema_status(conn: sa.Connection) -> SchemaStatus:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    current = tuple(MigrationContext.configure(conn).get_current_heads())
    if not current:
        names = set(sa.inspect(conn).get_table_names())
        ours = names & set(model.metadata.tables)
        state = SchemaState.UNKNOWN if ours else SchemaState.FRESH
    elif current == (head,):
        state = SchemaState.CURRENT
    else:
        known = {rev.revision for rev in script.walk_revisions()}
        state = SchemaState.BEHIND if set(current) <= known else SchemaState.UNKNOWN
    return SchemaStatus(state, current, head)


def upgrade(conn: sa.Connection, revision: str = "head") -> None:
    command.upgrade(alembic_config(conn), revision)


def downgrade(conn: sa.Connection, revision: str) -> None:
    command.downgrade(alembic_config(conn), revision)


def prepare_for_daemon(conn: sa.Connection) -> SchemaStatus:
    """
    Create the schema of an empty database; accept a current one; refuse one
    that is behind or unknown (L{DatabaseBehind}, L{DatabaseUnknown}).  The
    daemon never upgrades an existing database by itself: an operator runs
    C{kree-admin db upgrade} after taking a backup.
    """
    status = schema_status(conn)
    if status.state is SchemaState.FRESH:
        upgrade(conn)
        return schema_status(conn)
    status.require_current()
    return status
