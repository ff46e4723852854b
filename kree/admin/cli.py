"""
C{kree-admin}: the administrators' console.

    kree-admin [--config FILE] [--state-dir DIR] [--json] COMMAND ...

Commands that only read or change the database work whether or not kreed
runs.  Exit codes: 0 ok, 1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kree import __version__
from kree.config import Config, load_config
from kree.errors import ConfigError, KreeError
from kree.store import migrate
from kree.store.engine import create_engine, is_sqlite
from kree.store.pool import DBPool

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandFailed(Exception):
    """A command could not do its job; the message says what to do next."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kree-admin",
        description="Administer a KREE installation.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (as given to kreed)")
    parser.add_argument("--state-dir", metavar="DIR", help="state directory (as given to kreed)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--version", action="version", version=f"kree-admin {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    db = commands.add_parser(
        "db",
        help="database schema: upgrade, current, downgrade",
        description="Manage the database schema (alembic migrations). Works on SQLite "
        "and PostgreSQL URLs ([store] url), with or without kreed running; take a backup "
        "before upgrading a production database.",
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate to the newest revision (or --revision)")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(handler=db_upgrade)
    current = db_commands.add_parser("current", help="show the database's revision and the newest")
    current.set_defaults(handler=db_current)
    downgrade = db_commands.add_parser(
        "downgrade", help="migrate back to REVISION ('base' removes every table)"
    )
    downgrade.add_argument("revision", metavar="REVISION")
    downgrade.set_defaults(handler=db_downgrade)
    return parser


def _pool(config: Config) -> DBPool:
    if is_sqlite(config.store_url):
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(config.store_url, sqlite_synchronous=config.store.sqlite_synchronous)
    return DBPool(engine, reactor=None)


def _status_json(status: migrate.SchemaStatus) -> dict[str, Any]:
    return {
        "state": status.state.value,
        "current": list(status.current),
        "head": status.head,
        "message": status.describe(),
    }


def db_upgrade(config: Config, args) -> dict[str, Any]:
    pool = _pool(config)
    try:
        before = pool.run_in_thread(migrate.schema_status)
        if before.state is migrate.SchemaState.UNKNOWN:
            raise CommandFailed(before.describe())
        pool.run_in_thread(migrate.upgrade, args.revision)
        after = pool.run_in_thread(migrate.schema_status)
    finally:
        pool.stop()
    result = _status_json(after)
    result["from"] = list(before.current)
    result["message"] = (
        f"upgraded from {', '.join(before.current) or 'an empty database'} "
        f"to {', '.join(after.current)}"
        if before.current != after.current
        else f"already at {', '.join(after.current)}; nothing to do"
    )
    return result


def db_current(config: Config, args) -> dict[str, Any]:
    pool = _pool(config)
    try:
        return _status_json(pool.run_in_thread(migrate.schema_status))
    finally:
        pool.stop()


def db_downgrade(config: Config, args) -> dict[str, Any]:
    pool = _pool(config)
    try:
        before = pool.run_in_thread(migrate.schema_status)
        pool.run_in_thread(migrate.downgrade, args.revision)
        after = pool.run_in_thread(migrate.schema_status)
    finally:
        pool.stop()
    result = _status_json(after)
    result["from"] = list(before.current)
    result["message"] = (
        f"downgraded from {', '.join(before.current) or 'nothing'} "
        f"to {', '.join(after.current) or 'base (no tables)'}"
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, state_dir=args.state_dir)
    except ConfigError as e:
        print(f"kree-admin: {e.message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        result = args.handler(config, args)
    except (CommandFailed, KreeError) as e:
        _fail(args, str(e))
    except Exception as e:
        # Database errors and the like: say what happened, not a traceback.
        _fail(args, f"{type(e).__name__}: {e}")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(result["message"])
    sys.exit(EXIT_OK)


def _fail(args, message: str) -> None:
    if args.json:
        print(json.dumps({"error": message}, indent=2))
    print(f"kree-admin: {message}", file=sys.stderr)
    sys.exit(EXIT_FAILED)
