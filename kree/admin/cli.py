"""
C{kree-admin}: the administrators' console.

    kree-admin [--config FILE] [--state-dir DIR] [--json] COMMAND ...

Commands that only read or change the database work whether or not kreed
runs.  Exit codes: 0 ok, 1 failed, 2 usage.

A command handler returns a dict: its data (printed as JSON with --json) and
a "message" (printed for people), or a "text" rendering such as a table that
is printed for people only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kree import __version__, credentials, pki
from kree.config import Config, load_config
from kree.errors import ConfigError, KreeError
from kree.records import isoformat
from kree.store import migrate
from kree.store.engine import create_engine, is_sqlite
from kree.store.deliveries import DeliveriesStore
from kree.store.frontends import FrontendsStore
from kree.store.subscriptions import SubscriptionsStore
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

    ca = commands.add_parser(
        "ca",
        help="the certificate authority for frontend and server certificates",
        description="Create the CA whose certificates kreed trusts ([tls] ca; the key goes "
        "to <state-dir>/certs/ca.key, mode 0600). For production you may use your own CA "
        "instead: point [tls] ca at it and register frontends with `frontend add`.",
    )
    ca_commands = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    ca_commands.add_parser("init", help="create a new CA (refuses to overwrite one)").set_defaults(
        handler=ca_init
    )

    cert = commands.add_parser(
        "cert",
        help="issue certificates signed by the CA",
        description="Issue an ECDSA P-256 certificate signed by the CA of `ca init`.",
    )
    cert_commands = cert.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    issue = cert_commands.add_parser(
        "issue",
        help="issue a frontend (client) or the server certificate",
        description="--frontend NAME writes <state-dir>/certs/frontends/NAME.pem and .key and "
        "registers the frontend; --server HOST (repeatable: DNS names or IP addresses) "
        "writes kreed's server certificate ([tls] cert and key).",
    )
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--frontend", metavar="NAME", help="issue and register a frontend")
    who.add_argument("--server", metavar="HOST", action="append",
                     help="issue the server certificate for HOST (repeat for more names)")
    issue.set_defaults(handler=cert_issue)

    frontend = commands.add_parser(
        "frontend",
        help="registered frontends: add, list, revoke",
        description="Frontends are identified by the SHA-256 fingerprint of their client "
        "certificate. Revoking one takes effect on its next request, without restarting kreed.",
    )
    frontend_commands = frontend.add_subparsers(dest="frontend_command", metavar="ACTION",
                                                required=True)
    add = frontend_commands.add_parser("add", help="register a frontend's certificate")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--cert", metavar="FILE", required=True, help="its certificate (PEM or DER)")
    add.set_defaults(handler=frontend_add)
    frontend_commands.add_parser("list", help="list frontends").set_defaults(handler=frontend_list)

    subscriptions = commands.add_parser(
        "subscriptions",
        help="callback subscriptions of all frontends",
        description="Callback subscriptions: status (active, failing after [events] "
        "failing_after consecutive failures, ended by a 410), the last error, and deliveries "
        "pending, delivered and given up.",
    )
    subscription_commands = subscriptions.add_subparsers(dest="subscriptions_command",
                                                         metavar="ACTION", required=True)
    subscription_commands.add_parser("list", help="list subscriptions").set_defaults(
        handler=subscriptions_list)
    revoke = frontend_commands.add_parser("revoke", help="refuse a frontend from now on")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(handler=frontend_revoke)
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


def _frontends(config: Config):
    """The frontends table, creating an empty database like kreed would."""
    pool = _pool(config)
    status = pool.run_in_thread(migrate.schema_status)
    if status.state is migrate.SchemaState.FRESH:
        pool.run_in_thread(migrate.upgrade)
    else:
        status.require_current()
    return pool, FrontendsStore(pool)


def _frontend_json(frontend) -> dict[str, Any]:
    return {
        "name": frontend.name,
        "fingerprint": frontend.fingerprint,
        "subject": frontend.subject,
        "created": isoformat(frontend.created_at),
        "revoked": isoformat(frontend.revoked_at),
    }


def ca_init(config: Config, args) -> dict[str, Any]:
    issued = credentials.init_ca(config)
    return {
        "cert": str(issued.cert),
        "key": str(issued.key),
        "fingerprint": issued.fingerprint,
        "message": f"created CA {issued.cert} (key {issued.key}, mode 0600)",
    }


def cert_issue(config: Config, args) -> dict[str, Any]:
    if args.server:
        issued = credentials.issue_server(config, args.server)
        return {
            "cert": str(issued.cert),
            "key": str(issued.key),
            "fingerprint": issued.fingerprint,
            "message": f"issued server certificate {issued.cert} for {', '.join(args.server)}; "
            "restart kreed to use it",
        }
    if not credentials.valid_frontend_name(args.frontend):
        raise CommandFailed(
            f"frontend name {args.frontend!r}: use letters, digits, '.', '_' and '-'"
        )
    pool, frontends = _frontends(config)
    try:
        # Refuse before writing files if the name is taken.
        if any(f.name == args.frontend for f in pool.run_in_thread(frontends.list_thd)):
            raise CommandFailed(f"a frontend named {args.frontend!r} exists already")
        issued = credentials.issue_frontend(config, args.frontend)
        frontend = pool.run_in_thread(
            frontends.add_thd, args.frontend, issued.fingerprint, issued.subject
        )
    finally:
        pool.stop()
    return {
        **_frontend_json(frontend),
        "cert": str(issued.cert),
        "key": str(issued.key),
        "message": f"issued {issued.cert} (key {issued.key}, mode 0600) and registered "
        f"frontend {frontend.name} ({frontend.fingerprint})",
    }


def frontend_add(config: Config, args) -> dict[str, Any]:
    if not credentials.valid_frontend_name(args.name):
        raise CommandFailed(f"frontend name {args.name!r}: use letters, digits, '.', '_' and '-'")
    cert = pki.load_certificate(args.cert)
    ca_path = config.tls_path("ca")
    if ca_path.exists():
        from cryptography import x509

        cas = x509.load_pem_x509_certificates(ca_path.read_bytes())
        if not any(pki.signed_by(cert, ca) for ca in cas):
            raise CommandFailed(
                f"{args.cert} is not signed by the CA kreed trusts ({ca_path}); kreed would "
                "refuse its TLS handshake"
            )
    pool, frontends = _frontends(config)
    try:
        frontend = pool.run_in_thread(
            frontends.add_thd, args.name, pki.fingerprint(cert), pki.subject(cert)
        )
    finally:
        pool.stop()
    return {**_frontend_json(frontend),
            "message": f"registered frontend {frontend.name} ({frontend.fingerprint})"}


def frontend_list(config: Config, args) -> dict[str, Any]:
    pool, frontends = _frontends(config)
    try:
        rows = [_frontend_json(f) for f in pool.run_in_thread(frontends.list_thd)]
    finally:
        pool.stop()
    table = _table(
        ["NAME", "FINGERPRINT", "CREATED", "REVOKED"],
        [[r["name"], r["fingerprint"], r["created"], r["revoked"] or "-"] for r in rows],
    )
    return {"frontends": rows, "text": table if rows else "no frontends registered"}


def frontend_revoke(config: Config, args) -> dict[str, Any]:
    pool, frontends = _frontends(config)
    try:
        frontend = pool.run_in_thread(frontends.revoke_thd, args.name)
    finally:
        pool.stop()
    return {**_frontend_json(frontend),
            "message": f"revoked frontend {frontend.name}; its next request is refused"}


def subscriptions_list(config: Config, args) -> dict[str, Any]:
    pool, frontends = _frontends(config)
    try:
        names = {f.id: f.name for f in pool.run_in_thread(frontends.list_thd)}
        subs = pool.run_in_thread(SubscriptionsStore(pool).list_thd)
        counts = pool.run_in_thread(DeliveriesStore(pool).counts_thd)
    finally:
        pool.stop()
    rows = [
        {
            "id": sub.id,
            "frontend": names.get(sub.frontend_id),
            "url": sub.url,
            "job": sub.job_id,
            "events": sub.event_types,
            "status": sub.status,
            "consecutive_failures": sub.consecutive_failures,
            "last_error": sub.last_error,
            "pending": counts.get(sub.id, {}).get("pending", 0),
            "delivered": counts.get(sub.id, {}).get("delivered", 0),
            "given_up": counts.get(sub.id, {}).get("dead", 0),
        }
        for sub in subs
    ]
    table = _table(
        ["ID", "FRONTEND", "STATUS", "PENDING", "DELIVERED", "FAILURES", "URL", "LAST ERROR"],
        [[r["id"], r["frontend"], r["status"], r["pending"], r["delivered"],
          r["consecutive_failures"], r["url"], r["last_error"] or "-"] for r in rows],
    )
    return {"subscriptions": rows, "text": table if rows else "no subscriptions"}


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


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
    # "text" is a rendering for people (a table); JSON carries the data itself.
    text = result.pop("text", None)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(text if text is not None else result["message"])
    sys.exit(EXIT_OK)


def _fail(args, message: str) -> None:
    if args.json:
        print(json.dumps({"error": message}, indent=2))
    print(f"kree-admin: {message}", file=sys.stderr)
    sys.exit(EXIT_FAILED)
