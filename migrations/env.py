"""
Alembic environment for KREE.

KREE runs migrations through kree.store.migrate, which hands over an open
connection in config.attributes["connection"].  Plain `alembic -c alembic.ini`
from the source tree also works: it connects to sqlalchemy.url (or
$KREE_STORE_URL).
"""

import os

from alembic import context
from sqlalchemy import engine_from_config, pool

from kree.store.model import metadata

config = context.config


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    section = config.get_section(config.config_ini_section, {})
    if os.environ.get("KREE_STORE_URL"):
        section["sqlalchemy.url"] = os.environ["KREE_STORE_URL"]
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.begin() as connection:
        run(connection)


main()
