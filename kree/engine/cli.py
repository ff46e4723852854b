"""
The engine's commands.

    python -m kree.engine run [--no-events-fd] JOBDIR
    python -m kree.engine validate FILE [--param NAME=VALUE ...] [--policy FILE|-]
                                   [--max-memory BYTES] [--new-session]
    python -m kree.engine params FILE
    python -m kree.engine actors | software

C{kree-engine} takes the same commands and also Kepler's command line:

    kree-engine -runwf -nogui [-redirectgui DIR] [-NAME VALUE ...] workflow.xml

where NAME is relative to the top level as in Kepler (C{-iterations 10}
reaches the director) or a full name starting with '.'.  Unlike Kepler, a
failed workflow exits non-zero.  Exit codes: 0 finished (or valid), 1 failed
(or invalid), 2 usage, 3 stopped, 4 (validate) out of memory under
C{--max-memory}.

The daemon's workflow checker (kree.validation) runs C{validate} with the
policy on stdin (C{--policy -}), C{--max-memory} (the process limits its own
data segment first thing, so a runaway check fails with exit 4 instead of
growing) and C{--new-session} (a process group of its own, which the daemon
kills whole at its deadline).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

from kree.engine import sandbox, software
from kree.engine.protocol import EXIT_FAILED, EXIT_USAGE, stdin_fd
from kree.engine.registry import Registry
from kree.engine.runner import check, run_job

COMMANDS = ("run", "validate", "params", "actors", "software", "sandbox-check")
# validate ran out of the memory that --max-memory allowed it.
EXIT_OUT_OF_MEMORY = 4


def parse_value(text: str) -> Any:
    """--param VALUE: JSON if it parses (numbers, true, arrays), else a Ptolemy expression."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _params(pairs: list[str]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"kree-engine: --param wants NAME=VALUE, not {pair!r}")
        overrides[name] = parse_value(value)
    return overrides


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        print(f"kree-engine: cannot read {path}: {e.strerror}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _limit_memory(limit: int) -> None:
    """At most C{limit} bytes of data segment (heap and anonymous mappings) from now on."""
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def command_validate(args) -> int:
    if args.new_session:
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader
    if args.max_memory is not None:
        _limit_memory(args.max_memory)
        try:
            return _validate(args)
        except MemoryError:
            # Whatever needed the memory has been unwound; write without allocating much.
            os.write(2, b"kree-engine: the check ran out of memory (--max-memory %d)\n"
                     % args.max_memory)
            os._exit(EXIT_OUT_OF_MEMORY)
    return _validate(args)


def _validate(args) -> int:
    if args.policy == "-":
        policy = json.loads(sys.stdin.buffer.read())
    else:
        policy = json.loads(_read(args.policy)) if args.policy else None
    checked = check(_read(args.file), overrides=_params(args.param), policy=policy)
    result = {
        "valid": not checked.problems,
        "problems": checked.problems,
        "messages": [{"actor": a, "text": t} for a, t in checked.messages],
    }
    if checked.model is not None:
        result["director"] = checked.model.director.class_name
        result["actors"] = [{"name": a.full_name, "class": a.class_name}
                            for a in checked.model.actors]
        result["parameters"] = checked.model.parameter_table()
    _print(result)
    return 0 if result["valid"] else EXIT_FAILED


def command_params(args) -> int:
    checked = check(_read(args.file))
    if checked.model is None:
        _print({"valid": False, "problems": checked.problems})
        return EXIT_FAILED
    _print({"valid": True, "parameters": checked.model.parameter_table()})
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kree-engine", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the job in JOBDIR (DESIGN.md section 5)")
    run.add_argument("job_dir", metavar="JOBDIR")
    run.add_argument("--no-events-fd", action="store_true",
                     help="write events only to JOBDIR/events.jsonl, never to fd 3 (batch "
                          "systems such as Slurm leave descriptors of their own open there)")
    validate = commands.add_parser("validate", help="check a workflow without running it")
    validate.add_argument("file", metavar="FILE")
    validate.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    validate.add_argument("--policy", metavar="FILE", help="actor policy (JSON); - for stdin")
    validate.add_argument("--max-memory", metavar="BYTES", type=positive_int,
                          help=f"limit the check's memory; exit {EXIT_OUT_OF_MEMORY} beyond it")
    validate.add_argument("--new-session", action="store_true",
                          help="run in a session and process group of its own")
    params = commands.add_parser("params", help="list a workflow's parameters and defaults")
    params.add_argument("file", metavar="FILE")
    commands.add_parser("actors", help="list the actor classes (JSON)")
    commands.add_parser("software", help="detect third-party software (JSON)")
    commands.add_parser("sandbox-check",
                        help="enter the sandbox of $KREE_SANDBOX and show that an engine "
                             "can work there (kreed runs it at start)")
    return parser


def command_sandbox_check() -> int:
    """
    Enter the sandbox kreed describes in the environment, then do what every
    engine does: import the engine and its actors, start Python again, write
    in its directory and its temporary directory.  Exit 0, or print what
    failed and exit EXIT_FAILED.
    """
    import subprocess

    spec = sandbox.spec_from_environment()
    try:
        if spec is not None:
            sandbox.apply(spec)
        Registry.default()
        importlib.import_module("decimal")  # one nobody imported yet: the stdlib is readable
        Path("sandbox-check").write_text("ok")
        tempfile.TemporaryFile().close()
        subprocess.run([sys.executable, "-c", "import kree.engine.runner"], check=True,
                       capture_output=True, timeout=60)
    except subprocess.CalledProcessError as e:
        print(f"Python does not start in the sandbox: "
              f"{e.stderr.decode(errors='replace').strip().splitlines()[-1:]}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    _print({"sandbox": sandbox.describe(spec) if spec else None})
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in COMMANDS and argv[0].startswith("-") and argv[0] not in (
            "-h", "--help"):
        sys.exit(kepler_main(argv))
    args = build_parser().parse_args(argv)
    if args.command == "run":
        # A session and process group of our own: signals for the daemon
        # (or its terminal) are not ours, and our tree can be signalled whole.
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader
        sys.exit(run_job(Path(args.job_dir), stdin_fd=stdin_fd(),
                         use_fd3=not args.no_events_fd,
                         contained=sandbox.spec_from_environment()))
    if args.command == "sandbox-check":
        sys.exit(command_sandbox_check())
    if args.command == "validate":
        sys.exit(command_validate(args))
    if args.command == "params":
        sys.exit(command_params(args))
    if args.command == "actors":
        registry = Registry.default()
        _print({"actors": registry.describe(), "problems": registry.load_problems})
        sys.exit(0)
    _print(software.detect())
    sys.exit(0)


KEPLER_FLAGS = {"-runwf", "-nogui", "-noexit", "-nocache", "-nosplash"}


def kepler_main(argv: list[str]) -> int:
    """Kepler's command line: -runwf -nogui [-redirectgui DIR] -NAME VALUE ... FILE."""
    job_dir = None
    names: dict[str, Any] = {}
    rest = list(argv)
    workflow = None
    while rest:
        token = rest.pop(0)
        if token in KEPLER_FLAGS:
            continue
        if token == "-redirectgui":
            if not rest:
                print("kree-engine: -redirectgui needs a directory", file=sys.stderr)
                return EXIT_USAGE
            job_dir = Path(rest.pop(0))
        elif token.startswith("-") and len(token) > 1:
            if not rest:
                print(f"kree-engine: {token} needs a value", file=sys.stderr)
                return EXIT_USAGE
            names[token[1:]] = parse_value(rest.pop(0))
        elif workflow is None:
            workflow = token
        else:
            print(f"kree-engine: more than one workflow given ({workflow}, {token})",
                  file=sys.stderr)
            return EXIT_USAGE
    if workflow is None:
        print("kree-engine: no workflow file given", file=sys.stderr)
        return EXIT_USAGE
    data = _read(workflow)
    checked = check(data)
    if checked.model is None:
        for problem in checked.problems:
            print(f"kree-engine: {problem}", file=sys.stderr)
        return EXIT_FAILED
    overrides = {}
    for name, value in names.items():
        full = resolve_kepler_name(checked.model, name)
        if full is None:
            print(f"kree-engine: unknown parameter -{name}", file=sys.stderr)
            return EXIT_FAILED
        overrides[full] = value
    job_dir = job_dir or Path(tempfile.mkdtemp(prefix="kree-engine-"))
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "workflow.xml").write_bytes(data)
    (job_dir / "parameters.json").write_text(json.dumps(overrides))
    code = run_job(job_dir, stdin_fd=stdin_fd(), use_fd3=False, echo=sys.stdout)
    print(f"kree-engine: job directory {job_dir}", file=sys.stderr)
    return code


def resolve_kepler_name(model, name: str) -> str | None:
    """Kepler's -NAME: a full name, a top-level parameter, or the director's."""
    if name.startswith("."):
        return name
    top = model.top_scope
    if name in top.parameters:
        return f"{top.full_name}.{name}"
    if name in model.director.scope.parameters:
        return f"{model.director.full_name}.{name}"
    if "." in name:
        return f"{top.full_name}.{name}"
    return None
