"""
The CWL engine's commands, as kree.engine's (the daemon builds both kinds'
command lines the same way, in kree.engines):

    python -m kree.cwl run [--no-events-fd] JOBDIR
    python -m kree.cwl validate FILE [--policy FILE|-] [--max-memory BYTES] [--new-session]
    python -m kree.cwl params FILE
    python -m kree.cwl sandbox-check

C{validate} and C{params} print the JSON shapes kree.engine's print
(C{valid}, C{problems}, C{messages}, C{parameters}: one row per input with
its name, default, type and doc), so kree.validation checks CWL documents
with the same time and memory bounds.  C{validate} reads the policy (actor
classes: nothing in CWL) and runs cwltool's own check in this process, so
C{--max-memory} bounds both.  Exit codes: 0 valid, 1 invalid, 2 usage, 4
out of memory under C{--max-memory}.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

from kree.cwl import document
from kree.cwl.runner import CWLTOOL_FLAGS, run_job
from kree.engine import sandbox
from kree.engine.cli import positive_int
from kree.engine.protocol import EXIT_FAILED, EXIT_USAGE

COMMANDS = ("run", "validate", "params", "sandbox-check")
# validate ran out of the memory that --max-memory allowed it (as kree.engine's).
EXIT_OUT_OF_MEMORY = 4


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        print(f"kree.cwl: cannot read {path}: {e.strerror}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _parameters(path: str) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """(the parameter table, or None if the document cannot be read; the problems)."""
    try:
        doc = document.parse(_read(path))
    except document.DocumentError as e:
        return None, [str(e)]
    problems = document.problems(doc)
    if problems:
        return None, problems
    return [item.parameter_row() for item in document.inputs(document.main_process(doc))], []


def _cwltool_check(path: str) -> list[str]:
    """cwltool --validate, in this process: its errors, none if valid."""
    from cwltool.main import main as cwltool_main

    # With --validate, cwltool logs to the stdout it is given.
    out, err = io.StringIO(), io.StringIO()
    code = cwltool_main(["--validate", *CWLTOOL_FLAGS, path], stdout=out, stderr=err)
    if code == 0:
        return []
    lines = [line.strip() for line in (out.getvalue() + err.getvalue()).splitlines()
             if line.strip() and not line.startswith("INFO ")
             and not line.rstrip().endswith("is valid CWL.")]
    return [" ".join(line.removeprefix("ERROR ") for line in lines)[:4000]
            or f"cwltool found the document invalid (exit {code})"]


def command_validate(args) -> int:
    if args.new_session:
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader
    if args.policy == "-":
        sys.stdin.buffer.read()  # actor policies have nothing to say of CWL
    if args.max_memory is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (args.max_memory, args.max_memory))
        try:
            return _validate(args)
        except MemoryError:
            os.write(2, b"kree.cwl: the check ran out of memory (--max-memory %d)\n"
                     % args.max_memory)
            os._exit(EXIT_OUT_OF_MEMORY)
    return _validate(args)


def _validate(args) -> int:
    parameters, problems = _parameters(args.file)
    if parameters is not None:
        problems = _cwltool_check(str(Path(args.file).resolve()))
    result: dict[str, Any] = {"valid": not problems, "problems": problems, "messages": []}
    if parameters is not None:
        result["parameters"] = parameters
    _print(result)
    return 0 if result["valid"] else EXIT_FAILED


def command_params(args) -> int:
    parameters, problems = _parameters(args.file)
    if parameters is None:
        _print({"valid": False, "problems": problems})
        return EXIT_FAILED
    _print({"valid": True, "parameters": parameters})
    return 0


def command_sandbox_check() -> int:
    """
    Enter the sandbox of C{$KREE_SANDBOX} (kreed runs this at start, as
    kree.engine's) and show that cwltool works there: it imports, a new
    Python starts there and finds it, and node, which runs CWL's
    JavaScript expressions, runs where it is installed.
    """
    import shutil
    import subprocess

    spec = sandbox.spec_from_environment()
    try:
        if spec is not None:
            sandbox.apply(spec)
        importlib.import_module("cwltool.main")  # cwltool itself is readable here

        # A new interpreter starts here too (as kree.cwl.tool will); cwltool's
        # own files were read by the import above, so a light import will do.
        subprocess.run([sys.executable, "-c", "import cwltool"], check=True,
                       capture_output=True, timeout=120)
        node = shutil.which("node") or shutil.which("nodejs")
        if node is not None:
            subprocess.run([node, "--version"], check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as e:
        last = e.stderr.decode(errors="replace").strip().splitlines()[-1:]
        print(f"{e.cmd[0]} does not run in the sandbox: {last}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        print(f"cwltool cannot work in the sandbox: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    _print({"sandbox": sandbox.describe(spec) if spec else None, "node": node})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kree.cwl",
                                     description="The CWL engine (cwltool behind KREE's "
                                                 "engine protocol).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the CWL job in JOBDIR (DESIGN.md section 5)")
    run.add_argument("job_dir", metavar="JOBDIR")
    run.add_argument("--no-events-fd", action="store_true",
                     help="write events only to JOBDIR/events.jsonl, never to fd 3")
    validate = commands.add_parser("validate", help="check a CWL document without running it")
    validate.add_argument("file", metavar="FILE")
    validate.add_argument("--policy", metavar="FILE", help="actor policy (ignored); - for stdin")
    validate.add_argument("--max-memory", metavar="BYTES", type=positive_int,
                          help=f"limit the check's memory; exit {EXIT_OUT_OF_MEMORY} beyond it")
    validate.add_argument("--new-session", action="store_true",
                          help="run in a session and process group of its own")
    params = commands.add_parser("params", help="list a document's inputs and defaults")
    params.add_argument("file", metavar="FILE")
    commands.add_parser("sandbox-check",
                        help="enter the sandbox of $KREE_SANDBOX and show that cwltool and "
                             "node work there (kreed runs it at start)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "run":
        # A session and process group of our own, as kree.engine's (cwltool
        # gets another one, which SIGTERM reaches through us).
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader
        sys.exit(run_job(Path(args.job_dir), use_fd3=not args.no_events_fd,
                         contained=sandbox.spec_from_environment()))
    if args.command == "validate":
        sys.exit(command_validate(args))
    if args.command == "sandbox-check":
        sys.exit(command_sandbox_check())
    sys.exit(command_params(args))
