"""
C{kree}: the frontend command line, for people and scripts.

    kree [--url URL] [--cert FILE --key FILE] [--ca FILE] [--state-dir DIR]
         [--config FILE] [--user ID] [--json] COMMAND ...

Submit workflows, watch and steer jobs, and download what they produce,
through the frontend API (DESIGN.md section 3) with L{kree.client}.  The
connection comes from the options, else C{KREE_URL}, C{KREE_CERT},
C{KREE_KEY} and C{KREE_CA}, else the C{dev} frontend of a state directory
(C{--state-dir} or C{KREE_STATE_DIR}; C{--config} names it through kreed's
configuration file), else the URL C{https://localhost:8443}.

Output is readable text, or with C{--json} the server's JSON answers: one
indented document per answer, or one compact document per line for the
commands that stream events.  Exit codes: 0 ok; 1 the server refused or
failed (its message and error code on stderr); 2 usage, or the certificate
configuration is missing; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from kree import __version__
from kree.client import TERMINAL_STATES, KreeClient, KreeClientError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_URL = "https://localhost:8443"
DEV_FRONTEND = "dev"
# Seconds of each long poll; the server answers earlier when an event comes.
WAIT_SECONDS = 30
ACTION_HELP = {
    "queue": "queue a NEW job",
    "pause": "pause a job",
    "resume": "resume a paused job",
    "stop": "stop a job gracefully",
    "kill": "kill a job forcibly",
}
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class UsageError(Exception):
    """The command line or the certificate configuration is incomplete (exit 2)."""


class CommandFailed(Exception):
    """The command could not do its job for a reason of its own (exit 1)."""


@attrs.frozen
class Connection:
    url: str
    cert: Path
    key: Path
    ca: Path


# -- arguments --------------------------------------------------------------------


def json_value(text: str) -> Any:
    """JSON if C{text} parses as JSON (numbers, true, arrays, "quoted"), else the text."""
    def refuse(constant: str) -> Any:
        raise ValueError(constant)  # NaN and Infinity are not JSON

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def _assignment(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}=VALUE")
    return name, value


def parameter(text: str) -> tuple[str, Any]:
    name, value = _assignment(text, "NAME")
    return name, json_value(value)


def input_uri(text: str) -> tuple[str, str]:
    return _assignment(text, "NAME")


def answer(text: str) -> tuple[str, Any]:
    key, value = _assignment(text, "KEY")
    return key, json_value(value)


def _connection_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """
    Options accepted before the command and, for convenience, after it too;
    after it they default to "not given" so they never hide the ones before.
    """
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    flag: dict[str, Any] = {"default": False} if top else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("connection and output")
    group.add_argument("--url", metavar="URL", **default,
                       help=f"kreed's API, https://HOST:PORT (KREE_URL; default {DEFAULT_URL})")
    group.add_argument("--cert", metavar="FILE", **default,
                       help="this frontend's client certificate, PEM (KREE_CERT)")
    group.add_argument("--key", metavar="FILE", **default,
                       help="its private key, PEM (KREE_KEY)")
    group.add_argument("--ca", metavar="FILE", **default,
                       help="the CA that signed kreed's server certificate (KREE_CA)")
    group.add_argument("--state-dir", metavar="DIR", **default,
                       help="a kreed state directory (KREE_STATE_DIR): its CA and its "
                       f"'{DEV_FRONTEND}' frontend's certificate and key")
    group.add_argument("--config", metavar="FILE", **default,
                       help="kreed's configuration file: its state directory, CA and address")
    group.add_argument("--json", action="store_true", **flag,
                       help="print the server's JSON answers instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kree",
        description="Run workflows on a KREE server and follow their jobs.",
        epilog="Exit codes: 0 ok; 1 the server refused or failed; 2 usage or missing "
        "certificate configuration; 130 interrupted.",
    )
    _connection_options(parser, top=True)
    parser.add_argument("--user", metavar="ID",
                        help="the end user you act for (sent as X-KREE-User)")
    parser.add_argument("--version", action="version", version=f"kree {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable, help: str, **kwargs) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=kwargs.pop("description", help),
                                  **kwargs)
        _connection_options(sub, top=False)
        sub.set_defaults(handler=handler)
        return sub

    upload = command("upload", upload_command, "upload a workflow document; prints its URI",
                     description="Upload a MoML or CWL workflow (POST /v1/workflows) and print its "
                     "kree:workflow/<sha256> URI, which `kree submit` accepts.")
    upload.add_argument("file", metavar="FILE",
                        help="the workflow document (MoML XML, or CWL YAML or JSON)")

    submit = command(
        "submit", submit_command, "create a job; prints its id",
        description="Create a job for the workflow at URI (a local file is uploaded "
        "first) and print its id.  With --wait, follow the job until it ends: exit 0 "
        "if it FINISHED, 1 otherwise.",
    )
    submit.add_argument("workflow", metavar="URI|FILE",
                        help="kree:workflow/..., https:, http: or file: URI, or a local file")
    submit.add_argument("--param", metavar="NAME=VALUE", type=parameter, action="append",
                        default=[], help="a parameter by full name (.model.actor.param) or CWL "
                        "input id (message); VALUE "
                        "is JSON if it parses as JSON, else a string (repeatable)")
    submit.add_argument("--input", metavar="NAME=URI", type=input_uri, action="append",
                        default=[], help="an input to stage into the job (repeatable)")
    submit.add_argument("--resource", metavar="KEY=VALUE", type=answer, action="append",
                        default=[], help="a resource: backend (one the server offers: GET "
                        "/v1/capabilities), cpus, memory "
                        "(4096, \"512M\"), walltime (seconds or [D-]HH:MM:SS), partition, "
                        "priority, input_timeout, outputs_to; VALUE is JSON if it parses as "
                        "JSON, else a string (repeatable)")
    submit.add_argument("--queue", action="store_true", help="queue the job right away")
    submit.add_argument("--wait", action="store_true",
                        help="print state changes until the job ends")

    status = command("status", status_command, "show a job")
    status.add_argument("job", metavar="ID")

    listing = command("list", list_command, "list your jobs, newest first")
    listing.add_argument("--state", metavar="S", help="only jobs in state S (e.g. QUEUED)")
    listing.add_argument("--user", metavar="U", dest="filter_user", help="only jobs of user U")
    listing.add_argument("--limit", metavar="N", type=_positive, default=50,
                         help="at most N jobs (default 50)")

    for name, help in ACTION_HELP.items():
        sub = command(name, action_command, help)
        sub.add_argument("job", metavar="ID")
        sub.add_argument("--reason", metavar="TEXT", help="recorded with the state change")
    delete = command("delete", delete_command, "delete an ended or NEW job and its files")
    delete.add_argument("job", metavar="ID")

    answers = command("answer", answer_command, "answer a job that is WAITING for input",
                      description="Answer the pending prompt of a WAITING job; values are "
                      "JSON if they parse as JSON, else strings.")
    answers.add_argument("job", metavar="ID")
    answers.add_argument("answers", metavar="KEY=VALUE", type=answer, nargs="+")

    results = command("results", results_command, "show a job's results and products")
    results.add_argument("job", metavar="ID")

    fetch = command("fetch", fetch_command, "download a product",
                    description="Download a job's product to FILE, or to standard output.")
    fetch.add_argument("job", metavar="ID")
    fetch.add_argument("name", metavar="NAME")
    fetch.add_argument("-o", "--output", metavar="FILE", help="write to FILE ('-': stdout)")

    events = command("events", events_command, "show a job's events",
                     description="Print a job's events, one a line.  With --follow, wait "
                     "for new ones until the job ends or is deleted (Ctrl-C to stop).")
    events.add_argument("job", metavar="ID")
    events.add_argument("--follow", "-f", action="store_true", help="keep waiting for events")
    events.add_argument("--after", metavar="SEQ", type=_non_negative, default=0,
                        help="only events after sequence number SEQ")

    # No server connection: its own parser, without the connection options.
    listen = commands.add_parser(
        "listen", help="receive job events as a callback listener",
        description="Listen for KREE's signed callback deliveries (HTTP POSTs) and print "
        "each verified event as one line of JSON; rejected requests are reported on "
        "stderr.  Ctrl-C stops it.",
    )
    listen.add_argument("--port", metavar="P", type=_non_negative, required=True,
                        help="the port to listen on (0: any free port)")
    listen.add_argument("--secret", metavar="S", required=True,
                        help="the subscription's signing secret")
    listen.add_argument("--host", metavar="H", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1)")
    listen.set_defaults(handler=listen_command)
    return parser


def _whole_number(text: str, minimum: int) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is less than {minimum}")
    return number


def _positive(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative(text: str) -> int:
    return _whole_number(text, 0)


# -- the connection -----------------------------------------------------------------


def resolve_connection(args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
    """
    Flags win over environment variables, which win over the state
    directory's dev frontend.  The certificate and key are a pair: naming
    one of them explicitly means naming both.
    """
    def given(option: str, variable: str) -> tuple[str | None, str]:
        value = getattr(args, option, None)
        if value:
            return value, f"--{option.replace('_', '-')}"
        return environ.get(variable) or None, variable

    url, url_from = given("url", "KREE_URL")
    cert, cert_from = given("cert", "KREE_CERT")
    key, key_from = given("key", "KREE_KEY")
    ca, ca_from = given("ca", "KREE_CA")
    state_dir, state_from = given("state_dir", "KREE_STATE_DIR")

    dev_certs: Path | None = None
    dev_ca: Path | None = None
    dev_url = DEFAULT_URL
    if args.config:
        from kree.config import load_config
        from kree.errors import ConfigError

        try:
            config = load_config(args.config, state_dir=state_dir)
        except (ConfigError, OSError) as e:
            message = getattr(e, "message", None) or e
            raise UsageError(f"--config {args.config}: {message}") from None
        dev_certs, dev_ca = config.certs_dir, config.tls_path("ca")
        host, port = config.listen_host_port
        host = "localhost" if host in _WILDCARD_HOSTS or host == "127.0.0.1" else host
        dev_url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        state_from = f"--config {args.config}"
    elif state_dir:
        dev_certs, dev_ca = Path(state_dir) / "certs", Path(state_dir) / "certs" / "ca.pem"
        state_from = f"{state_from} {state_dir}"

    if cert is None and key is None and dev_certs is not None:
        cert = str(dev_certs / "frontends" / f"{DEV_FRONTEND}.pem")
        key = str(dev_certs / "frontends" / f"{DEV_FRONTEND}.key")
        cert_from = key_from = state_from
    if ca is None and dev_ca is not None:
        ca, ca_from = str(dev_ca), state_from
    missing = [
        f"{what} (--{option} FILE or {variable})"
        for what, option, variable, value in (
            ("client certificate", "cert", "KREE_CERT", cert),
            ("client key", "key", "KREE_KEY", key),
            ("CA certificate", "ca", "KREE_CA", ca),
        )
        if value is None
    ]
    if missing:
        raise UsageError(
            "missing " + ", ".join(missing)
            + "; or give --state-dir DIR (KREE_STATE_DIR) to use its dev frontend"
        )
    for path, source in ((cert, cert_from), (key, key_from), (ca, ca_from)):
        if not Path(path).is_file():
            raise UsageError(f"{path} (from {source}) is not a file")
    return Connection(url or dev_url, Path(cert), Path(key), Path(ca))


# -- output --------------------------------------------------------------------------


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def print_json_line(document: Any) -> None:
    print(json.dumps(document, separators=(",", ":"), ensure_ascii=False), flush=True)


def scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def key_values(document: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """C{key: value} lines; a nested object becomes indented lines."""
    lines = []
    for key, value in document.items():
        if key in skip:
            continue
        if isinstance(value, dict) and value:
            lines.append(f"{key}:")
            lines.extend(f"  {name}: {_nested(inner)}" for name, inner in value.items())
        elif isinstance(value, dict):
            lines.append(f"{key}: -")
        else:
            lines.append(f"{key}: {scalar(value)}")
    return "\n".join(lines)


def _nested(value: Any) -> str:
    # A staged input: its URI, then what is known about it.
    if isinstance(value, dict) and isinstance(value.get("uri"), str):
        notes = [f"{k} {scalar(v)}" for k, v in value.items() if k != "uri" and v is not None]
        return value["uri"] + (f" ({', '.join(notes)})" if notes else "")
    return scalar(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *([scalar(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def state_change(data: dict[str, Any]) -> str:
    """C{NEW -> QUEUED (reason)} from a job.state event's data."""
    change = f"{data.get('from')} -> {data.get('to')}"
    return change + (f" ({data['reason']})" if data.get("reason") else "")


def event_line(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    if event.get("type") == "job.state":
        summary = state_change(data)
    elif data:
        summary = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    else:
        summary = ""
    return f"{event.get('seq'):>4}  {event.get('time')}  {event.get('type')}  {summary}".rstrip()


def ends_following(event: dict[str, Any]) -> bool:
    """After this event, a job has nothing more to say."""
    if event.get("type") == "job.deleted":
        return True
    data = event.get("data") or {}
    return event.get("type") == "job.state" and data.get("to") in TERMINAL_STATES


# -- commands --------------------------------------------------------------------------


def _read_document(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def upload_command(client: KreeClient, args) -> int:
    uploaded = client.upload_workflow(_read_document(args.file))
    if args.json:
        print_json(uploaded)
    else:
        print(uploaded["uri"])
    return EXIT_OK


def submit_command(client: KreeClient, args) -> int:
    workflow = args.workflow
    if Path(workflow).is_file():
        workflow = client.upload_workflow(_read_document(workflow))["uri"]
    elif not _URI_SCHEME.match(workflow):
        raise UsageError(f"{workflow}: no such file, and not a URI")
    job = client.submit(workflow, parameters=dict(args.param), inputs=dict(args.input),
                        resources=dict(args.resource), queue=args.queue)
    if args.json:
        (print_json_line if args.wait else print_json)(job)
    else:
        print(job["id"], flush=True)
    if not args.wait:
        return EXIT_OK
    return wait_for_end(client, job, args)


def wait_for_end(client: KreeClient, job: dict[str, Any], args) -> int:
    """Follow the job's events until it ends; 0 if it FINISHED."""
    job_id, state, reason = job["id"], job["state"], job.get("error")
    after = 0
    while state not in TERMINAL_STATES:
        page = client.events(job_id, after=after, wait=WAIT_SECONDS)
        for event in page["events"]:
            after = max(after, event["seq"])
            if event["type"] == "job.deleted":
                raise CommandFailed(f"job {job_id} was deleted while waiting for it")
            if event["type"] != "job.state":
                continue
            if args.json:
                print_json_line(event)
            else:
                print(f"{job_id}: {state_change(event['data'])}", flush=True)
            state, reason = event["data"]["to"], event["data"].get("reason")
            if state in TERMINAL_STATES:
                break
        after = max(after, page.get("next") or 0)
    if state == "FINISHED":
        return EXIT_OK
    if state == "FAILED":
        reason = client.state(job_id).get("error") or reason
    print(f"kree: job {job_id} ended {state}" + (f": {reason}" if reason else ""),
          file=sys.stderr)
    return EXIT_FAILED


def status_command(client: KreeClient, args) -> int:
    job = client.job(args.job)
    if args.json:
        print_json(job)
    else:
        print(key_values(job, skip=("links",)))
    return EXIT_OK


def list_command(client: KreeClient, args) -> int:
    jobs: list[dict[str, Any]] = []
    after = None
    more = None
    while len(jobs) < args.limit:
        page = client.list_jobs(state=args.state, user=args.filter_user,
                                limit=min(args.limit - len(jobs), 500), after=after)
        jobs.extend(page["jobs"])
        after = more = page.get("next")
        if not more or not page["jobs"]:
            break
    if args.json:
        print_json({"jobs": jobs, "next": more})
        return EXIT_OK
    if not jobs:
        print("no jobs")
        return EXIT_OK
    print(table(["ID", "STATE", "USER", "CREATED", "ENDED", "WORKFLOW"],
                [[j["id"], j["state"], j.get("user"), j.get("created"), j.get("ended"),
                  j.get("workflow")] for j in jobs]))
    if more:
        print(f"(more jobs: raise --limit beyond {args.limit})", file=sys.stderr)
    return EXIT_OK


def action_command(client: KreeClient, args) -> int:
    state = client.action(args.job, args.command, args.reason)
    if args.json:
        print_json(state)
    else:
        paused_from = f" (from {state['paused_from']})" if state.get("paused_from") else ""
        print(f"{state['id']}: {state['state']}{paused_from}")
    return EXIT_OK


def delete_command(client: KreeClient, args) -> int:
    client.delete(args.job)
    if not args.json:  # 204: there is no JSON answer to print
        print(f"deleted {args.job}")
    return EXIT_OK


def answer_command(client: KreeClient, args) -> int:
    reply = client.answer(args.job, dict(args.answers))
    if args.json:
        print_json(reply)
    else:
        print(key_values(reply) if isinstance(reply, dict) else "answered")
    return EXIT_OK


def results_command(client: KreeClient, args) -> int:
    results = client.results(args.job)
    if args.json:
        print_json(results)
        return EXIT_OK
    print(key_values(results, skip=("products",)))
    products = results.get("products") or []
    if not products:
        print("products: none")
    else:
        print("products:")
        rows = [[p["name"], p.get("size"), p.get("media_type")] for p in products]
        print("\n".join("  " + line for line in
                        table(["NAME", "SIZE", "MEDIA TYPE"], rows).splitlines()))
    return EXIT_OK


def fetch_command(client: KreeClient, args) -> int:
    if args.output in (None, "-"):
        sys.stdout.flush()
        client.fetch_product(args.job, args.name, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(args.output)
    # Into a temporary file next to the target, renamed when complete, so a
    # failed download never leaves a truncated FILE behind.
    try:
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                       suffix=".part")
    except OSError as e:
        raise CommandFailed(f"cannot write {target}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            size, media_type = client.fetch_product(args.job, args.name, out)
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, target)
    except OSError as e:
        _remove(partial)
        raise CommandFailed(f"cannot write {target}: {e.strerror or e}") from None
    except BaseException:
        _remove(partial)
        raise
    print(f"wrote {size} bytes ({media_type}) to {target}", file=sys.stderr)
    return EXIT_OK


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def events_command(client: KreeClient, args) -> int:
    after = args.after
    while True:
        page = client.events(args.job, after=after, wait=WAIT_SECONDS if args.follow else 0)
        for event in page["events"]:
            after = max(after, event["seq"])
            if args.json:
                print_json_line(event)
            else:
                print(event_line(event), flush=True)
            if args.follow and ends_following(event):
                return EXIT_OK
        if not page["events"] and not args.follow:
            return EXIT_OK
        after = max(after, page.get("next") or 0)


def listen_command(args) -> int:
    """C{kree listen}: needs no server connection, so run() calls it without a client."""
    import threading
    import time

    from kree.listener import Listener

    output = threading.Lock()

    def on_event(event: dict[str, Any]) -> None:
        with output:
            print_json_line(event)

    def on_reject(status: int, reason: str) -> None:
        with output:
            print(f"kree listen: rejected a request ({status}): {reason}", file=sys.stderr,
                  flush=True)

    listener = Listener(args.secret, host=args.host, port=args.port, on_event=on_event,
                        on_reject=on_reject)
    try:
        listener.start()
    except OSError as e:
        raise CommandFailed(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") \
            from None
    try:
        print(f"kree listen: listening on {listener.url}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        listener.stop()


# -- main -------------------------------------------------------------------------------


def _fail(args, error: KreeClientError | CommandFailed) -> int:
    if isinstance(error, KreeClientError):
        message = str(error)
        document = {"error": {"code": error.code, "message": error.message,
                              "details": error.details}}
    else:
        message = str(error)
        document = {"error": {"code": "failed", "message": message, "details": {}}}
    if args.json:
        print_json(document)
    print(f"kree: {message}", file=sys.stderr)
    return EXIT_FAILED


def run(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "listen":
        try:
            return listen_command(args)
        except CommandFailed as e:
            return _fail(args, e)
    try:
        connection = resolve_connection(args, environ)
        client = KreeClient(connection.url, connection.cert, connection.key, connection.ca,
                            user=args.user)
    except UsageError as e:
        print(f"kree: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KreeClientError as e:
        # The URL, certificate, key or CA given cannot be used.
        print(f"kree: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            return args.handler(client, args)
    except UsageError as e:
        print(f"kree: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (KreeClientError, CommandFailed) as e:
        return _fail(args, e)


def main(argv: list[str] | None = None) -> None:
    for stream in (sys.stdout, sys.stderr):
        # Never a UnicodeEncodeError on output: what cannot be encoded is escaped.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        code = run(argv)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (kree list | head): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
