"""
C{kree-admin}: the administrators' console.

    kree-admin [--config FILE] [--state-dir DIR] [--json] COMMAND ...

Commands:

    db upgrade [--revision R] | current | downgrade REVISION
    ca init
    cert issue --frontend NAME | --server HOST ...
    frontend add NAME --cert FILE | list | revoke NAME
    subscriptions list
    jobs list [--state S] [--frontend NAME] [--user U] [--limit N]
    jobs show ID
    actors list | allow CLASS | restrict CLASS [--policy replace:X|remove|reject]
    software list | rescan
    cache list | purge [URI]
    config check FILE

Commands that only read or change the database or files work whether or not
kreed runs.  Exit codes: 0 ok, 1 failed, 2 usage.

A command handler returns a dict: its data (printed as JSON with --json) and
a "message" (printed for people), or a "text" rendering such as a table that
is printed for people only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import subprocess
import sys
from typing import Any, Iterator

from kree import __version__, credentials, pki
from kree.admin import client as admin_client
from kree.backends import registry
from kree.config import Config, load_config
from kree.engine import software as engine_software
from kree.engine.policy import valid_policy
from kree.engine.registry import DEFAULT_POLICY
from kree.engines import MOML
from kree.errors import ConfigError, JobNotFound, KreeError
from kree.records import isoformat
from kree.states import JobState
from kree.store import migrate
from kree.store.cache import CacheStore
from kree.store.engine import create_engine, is_sqlite, redacted_url
from kree.store.deliveries import DeliveriesStore
from kree.store.events import EventsStore, utcnow
from kree.store.frontends import FrontendsStore
from kree.store.jobs import JobsStore
from kree.store.policies import PoliciesStore
from kree.store.subscriptions import SubscriptionsStore
from kree.store.pool import DBPool

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandFailed(Exception):
    """
    A command could not do its job; the message says what to do next.
    C{data} is added to the JSON error object (--json).
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.data = data


class UsageError(CommandFailed):
    """The command line asks for something that cannot be (exit 2)."""

    exit_code = EXIT_USAGE


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """
    --config, --state-dir and --json: before the command, and after it too
    (C{kree-admin status --json}); after it they default to "not given", so
    they never hide the ones given before.
    """
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    flag: dict[str, Any] = {"default": False} if top else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("global options") if not top else parser
    group.add_argument("--config", metavar="FILE", **default,
                       help="TOML configuration (as given to kreed)")
    group.add_argument("--state-dir", metavar="DIR", **default,
                       help="state directory (as given to kreed)")
    group.add_argument("--json", action="store_true", **flag, help="machine-readable output")


def _accept_global_options_after_commands(parser: argparse.ArgumentParser) -> None:
    """Give every command and sub-command, at any depth, the global options."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _global_options(sub, top=False)
                _accept_global_options_after_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kree-admin",
        description="Administer a KREE installation.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage.",
    )
    _global_options(parser, top=True)
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

    status = commands.add_parser(
        "status", help="is kreed up; jobs by state, queue, backends, sandbox, failing "
        "subscriptions",
        description="Ask the running kreed (admin socket) for its status: jobs by state, "
        "each execution backend with its jobs and limit and what it reports (a batch "
        "system such as Slurm: whether its controller answers, and KREE's jobs in its "
        "queue), how engines are contained ([sandbox] mode, the account they run as), "
        "and failing subscriptions. When it is not running, say so "
        "(exit 1) and show what the database holds.")
    status.set_defaults(handler=daemon_status)
    _add_jobs_commands(commands)
    _add_actors_commands(commands)
    _add_software_commands(commands)
    _add_cache_commands(commands)
    _add_config_commands(commands)
    _accept_global_options_after_commands(parser)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _add_jobs_commands(commands) -> argparse._SubParsersAction:
    """
    `jobs list` and `jobs show` read the database.  Commands that act on
    running jobs through kreed's admin socket join the same group.
    """
    jobs = commands.add_parser(
        "jobs",
        help="jobs of all frontends: list, show, pause, resume, stop, kill, purge",
        description="Jobs of all frontends. list and show read the database (whether or "
        "not kreed runs); pause, resume, stop and kill act through the running kreed; purge "
        "works either way.",
    )
    job_commands = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    listing = job_commands.add_parser(
        "list", help="list jobs, newest first",
        description="List jobs, newest first; the filters combine.")
    listing.add_argument("--state", type=str.upper, choices=[s.value for s in JobState],
                         help="only jobs in this state")
    listing.add_argument("--frontend", metavar="NAME", help="only this frontend's jobs")
    listing.add_argument("--user", metavar="USER", help="only this end user's jobs")
    listing.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                         help="at most N jobs (default 100, at most 1000)")
    listing.set_defaults(handler=jobs_list)
    show = job_commands.add_parser(
        "show", help="a job's record, parameters, inputs, last messages and events")
    show.add_argument("job_id", metavar="ID")
    show.set_defaults(handler=jobs_show)
    for action, text in (("pause", "pause a job (SIGSTOP to its processes; a queued job is held)"),
                         ("resume", "resume a paused job"),
                         ("stop", "stop a job gracefully (SIGTERM, then SIGKILL after the grace period)"),
                         ("kill", "kill a job's whole process tree")):
        command = job_commands.add_parser(action, help=f"{text}; needs kreed running",
                                          description=f"{text[0].upper()}{text[1:]}, through "
                                          "kreed's admin socket (recorded in the audit log).")
        command.add_argument("job_id", metavar="ID")
        command.set_defaults(handler=jobs_action, action=action)
    purge = job_commands.add_parser(
        "purge", help="delete old jobs with their directories",
        description="Delete jobs that ended (or, with --state new, were created) more than "
        "DURATION ago, with their job directories. Through kreed when it runs (so it can "
        "make sure no engine is left), directly otherwise. Shows progress.")
    purge.add_argument("--older-than", metavar="DURATION", required=True, type=_duration,
                       help="e.g. 30d, 12h, 45m, 90s, or seconds")
    purge.add_argument("--state", choices=["terminal", "new", "all"], default="terminal",
                       help="terminal (FINISHED, FAILED, ABORTED; default), new, or all of these")
    purge.set_defaults(handler=jobs_purge)
    return job_commands


def _add_actors_commands(commands) -> None:
    actors = commands.add_parser(
        "actors",
        help="actor classes and their policy: list, allow, restrict",
        description="The actor classes the engine knows, with the policy kreed applies to "
        "each: the rule set here, or else the engine's default (ExternalExecution and "
        "PythonScript are rejected until allowed). Rules take effect for jobs prepared "
        "from now on.",
    )
    actor_commands = actors.add_subparsers(dest="actors_command", metavar="ACTION",
                                           required=True)
    actor_commands.add_parser("list", help="list actor classes with their policy").set_defaults(
        handler=actors_list)
    allow = actor_commands.add_parser("allow", help="allow an actor class in workflows")
    allow.add_argument("actor_class", metavar="CLASS", help="full class name")
    allow.set_defaults(handler=actors_allow)
    restrict = actor_commands.add_parser(
        "restrict",
        help="replace, remove or reject an actor class",
        description="replace:OTHER runs OTHER in its place, remove drops it from the "
        "workflow, reject refuses workflows that use it.",
    )
    restrict.add_argument("actor_class", metavar="CLASS", help="full class name")
    restrict.add_argument("--policy", default="reject", metavar="RULE",
                          help="replace:CLASS, remove or reject (default: reject)")
    restrict.set_defaults(handler=actors_restrict)


def _add_software_commands(commands) -> None:
    software = commands.add_parser(
        "software",
        help="third-party software actors call: list, rescan",
        description="The registry of third-party software (R, Octave, Matlab, Python) that "
        "kreed gives jobs and shows in /v1/capabilities.",
    )
    software_commands = software.add_subparsers(dest="software_command", metavar="ACTION",
                                                required=True)
    software_commands.add_parser("list", help="show the registry").set_defaults(
        handler=software_list)
    software_commands.add_parser(
        "rescan", help="detect the software on this machine and record it").set_defaults(
        handler=software_rescan)


def _add_cache_commands(commands) -> None:
    cache = commands.add_parser(
        "cache",
        help="the workflow cache: list, purge",
        description="Uploaded and fetched workflows: the index in the database and the "
        "bodies in <state-dir>/cache/.",
    )
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    cache_commands.add_parser("list", help="list cache entries").set_defaults(handler=cache_list)
    purge = cache_commands.add_parser(
        "purge",
        help="forget one URI or every entry, and delete bodies nothing references",
        description="Remove index entries (one URI, or all) and the body files no remaining "
        "entry references. Bodies that unfinished jobs still need are kept. A frontend "
        "uploads a purged workflow again to use it in new jobs.",
    )
    purge.add_argument("uri", metavar="URI", nargs="?", help="only this entry")
    purge.set_defaults(handler=cache_purge)


def _add_config_commands(commands) -> None:
    config = commands.add_parser(
        "config", help="configuration files: check",
        description="Check a kreed configuration file without starting kreed.")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION",
                                            required=True)
    check = config_commands.add_parser("check", help="validate FILE and show what it gives")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(handler=config_check)


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
    with _database(config, prepare=False) as pool:
        before = pool.run_in_thread(migrate.schema_status)
        if before.state is migrate.SchemaState.UNKNOWN:
            raise CommandFailed(before.describe())
        pool.run_in_thread(migrate.upgrade, args.revision)
        after = pool.run_in_thread(migrate.schema_status)
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
    with _database(config, prepare=False) as pool:
        return _status_json(pool.run_in_thread(migrate.schema_status))


def db_downgrade(config: Config, args) -> dict[str, Any]:
    with _database(config, prepare=False) as pool:
        before = pool.run_in_thread(migrate.schema_status)
        pool.run_in_thread(migrate.downgrade, args.revision)
        after = pool.run_in_thread(migrate.schema_status)
    result = _status_json(after)
    result["from"] = list(before.current)
    result["message"] = (
        f"downgraded from {', '.join(before.current) or 'nothing'} "
        f"to {', '.join(after.current) or 'base (no tables)'}"
    )
    return result


@contextlib.contextmanager
def _database(config: Config, *, prepare: bool = True) -> Iterator[DBPool]:
    """
    The database, closed again whatever happens.  With C{prepare}, an empty
    database is created (as kreed would) and one behind its migrations is
    refused with the command that fixes it.
    """
    pool = _pool(config)
    try:
        if prepare:
            status = pool.run_in_thread(migrate.schema_status)
            if status.state is migrate.SchemaState.FRESH:
                pool.run_in_thread(migrate.upgrade)
            else:
                status.require_current()
        yield pool
    finally:
        pool.stop()


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
    with _database(config) as pool:
        frontends = FrontendsStore(pool)
        # Refuse before writing files if the name is taken.
        if any(f.name == args.frontend for f in pool.run_in_thread(frontends.list_thd)):
            raise CommandFailed(f"a frontend named {args.frontend!r} exists already")
        issued = credentials.issue_frontend(config, args.frontend)
        frontend = pool.run_in_thread(
            frontends.add_thd, args.frontend, issued.fingerprint, issued.subject
        )
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
    with _database(config) as pool:
        frontends = FrontendsStore(pool)
        frontend = pool.run_in_thread(
            frontends.add_thd, args.name, pki.fingerprint(cert), pki.subject(cert)
        )
    return {**_frontend_json(frontend),
            "message": f"registered frontend {frontend.name} ({frontend.fingerprint})"}


def frontend_list(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        frontends = FrontendsStore(pool)
        rows = [_frontend_json(f) for f in pool.run_in_thread(frontends.list_thd)]
    table = _table(
        ["NAME", "FINGERPRINT", "CREATED", "REVOKED"],
        [[r["name"], r["fingerprint"], r["created"], r["revoked"] or "-"] for r in rows],
    )
    return {"frontends": rows, "text": table if rows else "no frontends registered"}


def frontend_revoke(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        frontends = FrontendsStore(pool)
        frontend = pool.run_in_thread(frontends.revoke_thd, args.name)
    return {**_frontend_json(frontend),
            "message": f"revoked frontend {frontend.name}; its next request is refused"}


def subscriptions_list(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        frontends = FrontendsStore(pool)
        names = {f.id: f.name for f in pool.run_in_thread(frontends.list_thd)}
        subs = pool.run_in_thread(SubscriptionsStore(pool).list_thd)
        counts = pool.run_in_thread(DeliveriesStore(pool).counts_thd)
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


# -- jobs (read from the database) ---------------------------------------------

SHOW_LAST = 20


def _job_json(job, frontend_names: dict[int, str]) -> dict[str, Any]:
    return {
        "id": job.id,
        "frontend": frontend_names.get(job.frontend_id),
        "user": job.user,
        "state": job.state.value,
        "paused_from": job.paused_from.value if job.paused_from else None,
        "workflow": job.workflow_uri,
        "created": isoformat(job.created_at),
        "queued": isoformat(job.queued_at),
        "started": isoformat(job.started_at),
        "ended": isoformat(job.ended_at),
        "exit_code": job.exit_code,
        "error": job.error,
        "progress": job.progress,
        "cpu_seconds": job.cpu_seconds,
        "peak_memory_bytes": job.peak_memory_bytes,
    }


def jobs_list(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        frontends = FrontendsStore(pool)
        known = pool.run_in_thread(frontends.list_thd)
        names = {f.id: f.name for f in known}
        frontend_id = None
        if args.frontend is not None:
            matches = [f.id for f in known if f.name == args.frontend]
            if not matches:
                raise CommandFailed(f"no frontend {args.frontend!r}; `kree-admin frontend list` "
                                    "shows the registered ones")
            frontend_id = matches[0]
        jobs = pool.run_in_thread(JobsStore(pool).list_thd, frontend_id=frontend_id,
                                  state=args.state, user=args.user, limit=args.limit)
    rows = [_job_json(job, names) for job in jobs]
    if not rows:
        filtered = any(v is not None for v in (args.state, args.frontend, args.user))
        return {"jobs": [], "text": "no jobs match" if filtered else "no jobs"}
    text = _table(
        ["ID", "FRONTEND", "USER", "STATE", "CREATED", "ENDED", "WORKFLOW"],
        [[r["id"], r["frontend"], r["user"] or "-", r["state"], r["created"], r["ended"] or "-",
          r["workflow"]] for r in rows],
    )
    if len(rows) == args.limit:
        text += f"\n(the newest {len(rows)}; --limit N shows more)"
    return {"jobs": rows, "text": text}


def _job_show_thd(conn, pool, job_id: str) -> dict[str, Any]:
    """Everything `jobs show` prints, read in one transaction."""
    detail = JobsStore(pool).get_detail_thd(conn, job_id)
    job = detail.job
    names = {f.id: f.name for f in FrontendsStore(pool).list_thd(conn)}
    messages, message_count = JobsStore(pool).last_messages_thd(conn, job_id, SHOW_LAST)
    events = EventsStore(pool).list_for_job_thd(conn, job_id, max(0, job.last_seq - SHOW_LAST),
                                                SHOW_LAST)
    event_count = job.last_seq  # seqs have no gaps
    record = {
        **_job_json(job, names),
        "workflow_sha256": job.workflow_sha256,
        "priority": job.priority,
        "running_seconds": round(job.running_time(utcnow()), 3),
        "job_dir": job.job_dir,
        "resources": job.resources,
        "backend": job.backend,
        "backend_ref": job.backend_ref,
        "events_consumed": job.events_consumed,
        "last_seq": job.last_seq,
    }
    return {
        "job": record,
        "parameters": detail.parameters,
        "inputs": [
            {"name": i.name, "uri": i.uri, "status": i.status, "sha256": i.sha256,
             "size": i.size, "staged": isoformat(i.staged_at)}
            for i in detail.inputs
        ],
        "messages": [
            {"id": m.id, "time": isoformat(m.time), "level": m.level, "source": m.source,
             "text": m.text}
            for m in messages
        ],
        "message_count": message_count,
        "events": [e.to_json() for e in events],
        "event_count": event_count,
    }


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _last(what: str, shown: int, total: int) -> str:
    if shown == total:
        return f"{what} ({total}):" if total else f"{what}: none"
    return f"{what} (the last {shown} of {total}):"


def jobs_show(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        try:
            shown = pool.run_in_thread(_job_show_thd, pool, args.job_id)
        except JobNotFound:
            raise CommandFailed(f"no job {args.job_id!r}; `kree-admin jobs list` shows the jobs"
                                ) from None
    lines = [f"job {shown['job']['id']}"]
    lines += [f"  {key}: {_value(value)}" for key, value in shown["job"].items() if key != "id"]
    lines.append("parameters:" if shown["parameters"] else "parameters: none")
    lines += [f"  {name}: {_value(value)}" for name, value in shown["parameters"].items()]
    lines.append("inputs:" if shown["inputs"] else "inputs: none")
    lines += [f"  {i['name']}: {i['uri']} ({i['status']}"
              + (f", sha256 {i['sha256']}, {i['size']} bytes" if i["sha256"] else "") + ")"
              for i in shown["inputs"]]
    lines.append(_last("messages", len(shown["messages"]), shown["message_count"]))
    for m in shown["messages"]:
        text = m["text"].replace("\n", "\n      ")
        lines.append(f"  {m['time']} {m['level']} {m['source']}: {text}")
    lines.append(_last("events", len(shown["events"]), shown["event_count"]))
    lines += [f"  #{e['seq']} {e['time']} {e['type']} {_value(e['data'])}"
              for e in shown["events"]]
    return {**shown, "text": "\n".join(lines)}


# -- actors and their policy ---------------------------------------------------

ENGINE_TIMEOUT_SECONDS = 60


def _engine_json(command: str, timeout: float = ENGINE_TIMEOUT_SECONDS) -> Any:
    """Run `python -m kree.engine COMMAND` (the engine's own view) and parse its JSON."""
    args = MOML.command(command)
    shown = shlex.join(args)
    try:
        result = subprocess.run(args,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"`{shown}` did not finish within {timeout:g} s; run it by hand "
                            "to see where it hangs") from None
    except OSError as e:
        raise CommandFailed(f"cannot run `{shown}`: {e.strerror}") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no error output"])[-1]
        raise CommandFailed(f"`{shown}` failed (exit {result.returncode}): {last}; run it by "
                            "hand for the whole output")
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise CommandFailed(f"`{shown}` did not print JSON; run it by hand to see what it "
                            "printed") from None


def _engine_actors() -> dict[str, Any]:
    described = _engine_json("actors")
    if not isinstance(described, dict) or not isinstance(described.get("actors"), list):
        raise CommandFailed("`python -m kree.engine actors` printed no actor list")
    return described


def _software_text(actor: dict[str, Any]) -> str:
    needed = list(actor.get("software") or [])
    if actor.get("software_any"):
        needed.append("|".join(actor["software_any"]))
    return ", ".join(needed) or "-"


def actors_list(config: Config, args) -> dict[str, Any]:
    described = _engine_actors()
    with _database(config) as pool:
        rules = pool.run_in_thread(PoliciesStore(pool).all_thd)
    policy = {**DEFAULT_POLICY, **rules}
    rows = [
        {
            "class": actor["class"],
            "package": actor.get("package"),
            "policy": policy.get(actor["class"], "allow"),
            "policy_from": ("rule" if actor["class"] in rules
                            else "default" if actor["class"] in DEFAULT_POLICY else "allow"),
            "software": actor.get("software") or [],
            "software_any": actor.get("software_any") or [],
            "doc": actor.get("doc", ""),
        }
        for actor in described["actors"]
    ]
    known = {row["class"] for row in rows}
    other_rules = {name: rule for name, rule in rules.items() if name not in known}
    problems = list(described.get("problems") or [])
    for problem in problems:
        _warn(f"loading actor packages: {problem}")
    text = _table(["CLASS", "PACKAGE", "POLICY", "SOFTWARE"],
                  [[r["class"], r["package"] or "-", r["policy"], _software_text(r)]
                   for r in rows]) if rows else "the engine knows no actor classes"
    if other_rules:
        text += "\nrules for classes the engine does not know (they apply if a package adds " \
                "them):\n" + "\n".join(f"  {name}: {rule}" for name, rule in other_rules.items())
    return {"actors": rows, "other_rules": other_rules, "problems": problems, "text": text}


def _set_rule(config: Config, actor_class: str, rule: str) -> dict[str, Any]:
    # The rule is checked here, by the use case; the store only writes it.
    _check_rule_arg(rule)
    if not actor_class or any(c.isspace() for c in actor_class):
        raise UsageError(f"actor class {actor_class!r}: give the full class name, such as "
                         "ptolemy.actor.lib.python.PythonScript")
    known = {actor["class"] for actor in _engine_actors()["actors"]}
    if actor_class not in known:
        _warn(f"{actor_class} is not a class the engine knows; the rule applies if a package "
              "adds it")
    replacement = rule.removeprefix("replace:") if rule.startswith("replace:") else None
    if replacement is not None and replacement not in known:
        _warn(f"the replacement {replacement} is not a class the engine knows; it works only "
              "if a package adds it")
    with _database(config) as pool:
        policies = PoliciesStore(pool)

        def change_thd(conn):
            before = policies.all_thd(conn).get(actor_class)
            policies.set_thd(conn, actor_class, rule)
            return before

        before = pool.run_in_thread(change_thd)
    previous = before or DEFAULT_POLICY.get(actor_class, "allow")
    change = (f"{previous} (unchanged)" if previous == rule else f"{previous} -> {rule}")
    return {
        "class": actor_class,
        "policy": rule,
        "previous": previous,
        "known": actor_class in known,
        "message": f"{actor_class}: {change}; applies to jobs prepared from now on",
    }


def _check_rule_arg(rule: str) -> None:
    if not valid_policy(rule):
        raise UsageError(f"policy {rule!r} is not valid: use replace:CLASS (run CLASS in its "
                         "place), remove (drop it from the workflow) or reject (refuse "
                         "workflows that use it)")


def actors_allow(config: Config, args) -> dict[str, Any]:
    return _set_rule(config, args.actor_class, "allow")


def actors_restrict(config: Config, args) -> dict[str, Any]:
    if args.policy == "allow":
        raise UsageError(f"restrict takes replace:CLASS, remove or reject; to allow "
                         f"{args.actor_class} use `kree-admin actors allow {args.actor_class}`")
    return _set_rule(config, args.actor_class, args.policy)


# -- third-party software ------------------------------------------------------

SOFTWARE_TIMEOUT_SECONDS = engine_software.TIMEOUT_SECONDS * len(engine_software.PROGRAMS) + 30


def _software_rows(registry: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    return [
        {"name": name, "installed": entry is not None,
         "path": entry["path"] if entry else None,
         "version": entry.get("version") if entry else None}
        for name, entry in registry.items()
    ]


def _software_table(rows: list[dict[str, Any]]) -> str:
    return _table(["NAME", "PATH", "VERSION"],
                  [[r["name"], r["path"] or "not installed", r["version"] or "-"] for r in rows])


def software_list(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        registry = pool.run_in_thread(PoliciesStore(pool).software_thd)
    rows = _software_rows(registry)
    if not rows:
        return {"software": [],
                "message": "the software registry is empty; run `kree-admin software rescan` to "
                "detect " + ", ".join(engine_software.PROGRAMS)}
    return {"software": rows, "text": _software_table(rows)}


def software_rescan(config: Config, args) -> dict[str, Any]:
    # Open the database first: a database behind fails before the slow part.
    with _database(config) as pool:
        print(f"detecting {', '.join(engine_software.PROGRAMS)} ...", file=sys.stderr,
              flush=True)
        found = _engine_json("software", SOFTWARE_TIMEOUT_SECONDS)
        if not isinstance(found, dict) or not all(
                entry is None or (isinstance(entry, dict) and entry.get("path"))
                for entry in found.values()):
            raise CommandFailed("`python -m kree.engine software` printed no registry")
        print("done", file=sys.stderr, flush=True)
        pool.run_in_thread(PoliciesStore(pool).record_software_thd, found)
        registry = pool.run_in_thread(PoliciesStore(pool).software_thd)
    rows = _software_rows(registry)
    return {"software": rows, "text": _software_table(rows) if rows else "no software known"}


# -- the workflow cache ------------------------------------------------------------

SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def _cache_entry_json(entry, cache_dir) -> dict[str, Any]:
    return {
        "uri": entry.uri,
        "sha256": entry.sha256,
        "size": entry.size,
        "etag": entry.etag,
        "last_modified": entry.last_modified,
        "fetched": isoformat(entry.fetched_at),
        "checked": isoformat(entry.checked_at),
        "body_present": (cache_dir / entry.sha256).is_file(),
    }


def cache_list(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        entries = pool.run_in_thread(CacheStore(pool).list_thd)
    rows = [_cache_entry_json(e, config.cache_dir) for e in entries]
    if not rows:
        return {"entries": [], "text": "the cache is empty"}
    text = _table(["URI", "SHA256", "SIZE", "FETCHED", "CHECKED"],
                  [[r["uri"], r["sha256"], r["size"], r["fetched"], r["checked"]] for r in rows])
    missing = [r["uri"] for r in rows if not r["body_present"]]
    if missing:
        text += f"\n{len(missing)} entr{'y has' if len(missing) == 1 else 'ies have'} no body " \
                f"file in {config.cache_dir}: {', '.join(missing)}"
    return {"entries": rows, "text": text}


def _purge_thd(conn, pool, uri: str | None):
    """
    Remove the entries; the hashes still indexed, and those that unfinished
    jobs (uploaded kree:workflow/ URIs) still need.
    """
    cache = CacheStore(pool)
    purged_sha = None
    if uri is not None:
        entry = cache.get_thd(conn, uri)
        if entry is None:
            raise CommandFailed(f"no cache entry for {uri!r}; `kree-admin cache list` shows them")
        purged_sha = entry.sha256
    removed = cache.purge_thd(conn, uri)
    remaining = {entry.sha256 for entry in cache.list_thd(conn)}
    needed = JobsStore(pool).unfinished_workflow_hashes_thd(conn)
    return removed, purged_sha, remaining, needed


def cache_purge(config: Config, args) -> dict[str, Any]:
    with _database(config) as pool:
        removed, purged_sha, remaining, needed = pool.run_in_thread(_purge_thd, pool, args.uri)
    cache_dir = config.cache_dir
    if args.uri is not None:
        candidates = [cache_dir / purged_sha]
    else:
        candidates = sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []
    deleted, kept = [], []
    for path in candidates:
        if not SHA256_NAME.fullmatch(path.name) or not path.is_file():
            continue
        if path.name in remaining:
            continue
        if path.name in needed:
            kept.append(path.name)
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise CommandFailed(f"purged {removed} entries but cannot delete {path}: "
                                f"{e.strerror}; check its permissions and run purge again"
                                ) from None
        deleted.append(path.name)
    message = (f"purged {removed} entr{'y' if removed == 1 else 'ies'} and "
               f"{len(deleted)} file{'' if len(deleted) == 1 else 's'}")
    if kept:
        message += (f"; kept {len(kept)} file{'' if len(kept) == 1 else 's'} that unfinished "
                    "jobs still need")
    return {"entries": removed, "files": len(deleted), "deleted": deleted, "kept": kept,
            "message": message}


# -- configuration ------------------------------------------------------------------


def config_check(config: Config, args) -> dict[str, Any]:
    try:
        checked = load_config(args.file, state_dir=args.state_dir)
    except ConfigError as e:
        raise CommandFailed(f"{args.file} is not valid:\n  " + "\n  ".join(e.problems),
                            valid=False, problems=e.problems) from None
    try:
        url = redacted_url(checked.store_url)
    except ValueError:
        problem = f"store.url: {checked.store.url!r} is not a database URL"
        raise CommandFailed(f"{args.file} is not valid:\n  {problem}", valid=False,
                            problems=[problem]) from None
    return {
        "valid": True,
        "file": str(checked.source),
        "state_dir": str(checked.state_dir),
        "store_url": url,
        "message": f"{args.file}: valid\n  state dir: {checked.state_dir}\n  store: {url}",
    }


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def _printable_streams() -> None:
    """
    Text that cannot be encoded (a lone surrogate in old data, a terminal in
    ASCII) is shown escaped (C{\\ud800}) rather than crashing the command.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> None:
    _printable_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, state_dir=args.state_dir)
    except ConfigError as e:
        print(f"kree-admin: {e.message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        result = args.handler(config, args)
    except CommandFailed as e:
        _fail(args, str(e), e.exit_code, e.data)
    except KreeError as e:
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


# -- commands that need the running daemon (admin socket) ---------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h or 90s")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _call(config: Config, command: str, args: dict[str, Any] | None = None, **kwargs) -> Any:
    try:
        return admin_client.call(config.admin_socket, command, args, **kwargs)
    except admin_client.DaemonNotRunning as e:
        raise CommandFailed(str(e), daemon="down") from None
    except admin_client.AdminCallFailed as e:
        raise CommandFailed(e.message, code=e.code) from None


def daemon_status(config: Config, args) -> dict[str, Any]:
    try:
        status = admin_client.call(config.admin_socket, "status")
    except admin_client.DaemonNotRunning as e:
        with _database(config) as pool:
            counts = pool.run_in_thread(JobsStore(pool).count_by_state_thd)
            subs = pool.run_in_thread(SubscriptionsStore(pool).list_thd)
        failing = [s.id for s in subs if s.status == "failing"]
        raise CommandFailed(
            f"{e}\n  database: jobs by state {counts or 'none'}; "
            f"{len(failing)} failing subscriptions", daemon="down", jobs=counts,
            failing_subscriptions=failing) from None
    except admin_client.AdminCallFailed as e:
        raise CommandFailed(e.message, code=e.code) from None
    jobs = ", ".join(f"{state} {count}" for state, count in sorted(status["jobs"].items()))
    failing = status["subscriptions"]["failing"]
    lines = [
        f"kreed {status['version']} up {status['uptime_seconds']:.0f} s (pid {status['pid']})",
        f"state directory: {status['state_dir']}",
        f"database: {status['store']} ({status['schema']})",
        f"jobs: {jobs or 'none'}",
        f"queue: {status['queue_length']} waiting; engines: {status['running_engines']} "
        f"running",
        _sandbox_line(status.get("sandbox") or {"mode": "none"}),
    ]
    # Each backend words what its status() said; one not installed here shows its counts.
    classes = registry.installed(problems=[])
    for backend in status["backends"]:
        line = f"backend {backend['name']}: {backend['jobs']} of {backend['limit']} jobs"
        cls = classes.get(backend["name"])
        more, own = cls.describe_status(backend) if cls is not None else ("", [])
        lines.append(line + more)
        lines += own
    lines.append(
        f"subscriptions: {status['subscriptions']['active']} active, {len(failing)} failing")
    lines += [f"  failing: {f['id']} {f['url']} ({f['last_error']})" for f in failing]
    return {**status, "text": "\n".join(lines)}


def _sandbox_line(sandbox: dict[str, Any]) -> str:
    if sandbox["mode"] == "none":
        who = f", engines as {sandbox['user']}" if sandbox.get("user") else ""
        return f"sandbox: none (engines are not contained{who})"
    return (f"sandbox: {sandbox['mode']} (Landlock ABI {sandbox.get('landlock_abi')}), engines as "
            f"{sandbox.get('user') or 'kreed’s own account'}")


def jobs_action(config: Config, args) -> dict[str, Any]:
    result = _call(config, f"jobs.{args.action}", {"id": args.job_id})
    paused = f" (from {result['paused_from']})" if result.get("paused_from") else ""
    return {**result, "message": f"job {result['id']}: {result['state']}{paused}"}


def jobs_purge(config: Config, args) -> dict[str, Any]:
    states = {"terminal": [s.value for s in JobState if s.terminal], "new": ["NEW"]}.get(
        args.state, [s.value for s in JobState if s.terminal] + ["NEW"])

    def progress(step: dict) -> None:
        print(f"purging: {step['done']} of {step['total']}", file=sys.stderr, flush=True)

    try:
        result = admin_client.call(config.admin_socket, "jobs.purge",
                                   {"older_than_seconds": args.older_than, "states": states},
                                   on_progress=progress)
        via = "kreed"
    except admin_client.DaemonNotRunning:
        result, via = _purge_directly(config, args.older_than, states, progress), "the database"
    except admin_client.AdminCallFailed as e:
        raise CommandFailed(e.message, code=e.code) from None
    return {**result, "via": via,
            "message": f"purged {result['purged']} jobs (through {via})"}


def _purge_directly(config: Config, older_than: float, states: list[str], progress) -> dict:
    """
    kreed is down, so no engine runs: the job service purges as kreed's would
    (each record with its job.deleted event, then its directory), on a
    reactor run for this command alone.
    """
    from twisted.internet import reactor

    from kree.jobs import JobService
    from kree.store import Store

    with _database(config):
        pass  # created if new, refused if behind its migrations
    store = Store.from_url(config.store_url, reactor, pool_size=1,
                           sqlite_synchronous=config.store.sqlite_synchronous)
    service = JobService(store, reactor, config.jobs_dir)

    async def purge() -> int:
        store.start()
        try:
            return await service.purge(
                older_than, [JobState(name) for name in states],
                lambda done, total: progress({"done": done, "total": total}))
        finally:
            store.stop()

    return {"purged": _on_a_reactor(purge)}


def _on_a_reactor(work):
    """Run the coroutine C{work()} on Twisted's reactor, once, and answer its result."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    outcome: list = []

    def begin() -> None:
        done = Deferred.fromCoroutine(work())
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(begin)
    reactor.run(installSignalHandlers=False)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def _fail(args, message: str, code: int = EXIT_FAILED,
          data: dict[str, Any] | None = None) -> None:
    if args.json:
        print(json.dumps({**(data or {}), "error": message}, indent=2, sort_keys=True))
    print(f"kree-admin: {message}", file=sys.stderr)
    sys.exit(code)


def _warn(message: str) -> None:
    print(f"kree-admin: warning: {message}", file=sys.stderr)
