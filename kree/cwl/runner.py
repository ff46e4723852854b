"""
Running one CWL job directory with cwltool.

A job directory holds C{workflow.cwl}, C{parameters.json} (values by input
id) and C{inputs/}; the engine writes C{job.json} (the job order),
C{events.jsonl}, C{outputs/} (cwltool's output directory), C{tmp/} and
C{tmpout/} (its temporary directories: inside the job, the only place the
sandbox lets it write), C{results.json} (the output object, each File naming
its product) and C{products/} (every output File, linked or copied).

cwltool runs as a child in a session of its own (it gives its tools none,
so its process group is the whole tree): SIGTERM to the engine is passed to
that group, cwltool stops its tools and exits 15, and the job ends stopped.
Its step log on stderr becomes messages and progress; its stderr is also
copied to ours (the job's engine.log).  The last event is always C{end}
with the exit code: 0 finished, 1 failed, 3 stopped, 33 an unsupported
requirement (as cwltool's), 2 usage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from kree.cwl import document
from kree.engine.runner import enter_sandbox
from kree.engine.protocol import (
    EXIT_FAILED,
    EXIT_FINISHED,
    EXIT_STOPPED,
    PRODUCT_NAME,
    EngineContext,
    EventWriter,
)
from kree.engine.sandbox import SandboxSpec

#: cwltool's exit code for a requirement it does not support.
EXIT_UNSUPPORTED = 33
#: cwltool's exit code when it was stopped by SIGTERM.
CWLTOOL_TERMINATED = 15
#: The variable that marks every process of a job's tree (kree.backends.proctree
#: finds escaped children by it, to pause and kill them): cwltool gives tools a
#: fresh environment, so it must be told to keep it.
JOB_MARKER = "KREE_JOB_ID"

#: The flags every run and check gets: no containers (yet), no colour, paths
#: as the document has them, and no schema fetched from anywhere.
CWLTOOL_FLAGS = ("--no-container", "--relax-path-checks", "--disable-color", "--skip-schemas")

#: The output object, as the daemon reads it (kree.jobdir.RESULTS_FILE).
RESULTS = "results.json"

_LEVEL = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<text>.*)$")
_STEP = re.compile(r"^\[step (?P<step>[^\]]+)\] (?P<what>start|completed (?P<status>\w+))$")
_EXITED = re.compile(r"^\[job (?P<step>[^\]]+)\] exited with status: (?P<code>\S+)")
_FINAL = re.compile(r"^Final process status is (?P<status>\w+)")
#: The actor field of messages that are cwltool's rather than a step's.
CWLTOOL = "cwltool"


def cwltool_command(*args: str, python: str | None = None) -> list[str]:
    """cwltool with its exit code (see kree.cwl.tool)."""
    return [python or sys.executable, "-m", "kree.cwl.tool", *args]


class StepLog:
    """cwltool's stderr, line by line: messages, progress, and why it failed."""

    def __init__(self, context: EngineContext, steps: list[str]) -> None:
        self._context = context
        self._total = len(steps)
        self._done: set[str] = set()
        self.failed_steps: list[str] = []
        self.exit_status: dict[str, str] = {}
        #: The last ERROR message, continuation lines included.
        self.error: list[str] = []
        self._in_error = False

    def line(self, raw: str) -> None:
        match = _LEVEL.match(raw)
        if match is None:
            if self._in_error and raw.strip():
                self.error.append(raw.strip())
            return
        level, text = match["level"], match["text"].strip()
        self._in_error = level in ("ERROR", "CRITICAL")
        if self._in_error:
            self.error = [text]
            self._context.message(CWLTOOL, text, level="error")
            return
        step = _STEP.match(text)
        if step is not None:
            name = step["step"].strip()
            if step["what"] == "start":
                self._context.message(name, f"step {name} started")
                return
            status = step["status"]
            self._context.message(name, f"step {name} completed {status}",
                                  level="info" if status == "success" else "error")
            if status == "success":
                self._done.add(name)
                if self._total:
                    self._context.progress(min(len(self._done) / self._total, 0.99))
            else:
                self.failed_steps.append(name)
            return
        exited = _EXITED.match(text)
        if exited is not None:
            self.exit_status[exited["step"].strip()] = exited["code"]
            return
        final = _FINAL.match(text)
        if final is not None:
            self._context.message(CWLTOOL, text,
                                  level="info" if final["status"] == "success" else "error")

    def failure(self, code: int) -> str:
        """Why the run failed, in a sentence."""
        if code == EXIT_UNSUPPORTED:
            detail = " ".join(self.error[1:] or self.error) or "see the job's messages"
            return f"the workflow needs a requirement this server does not support: {detail}"
        if self.failed_steps:
            parts = []
            for step in self.failed_steps:
                status = self.exit_status.get(step)
                parts.append(f"step {step} failed" + (f" (exit status {status})" if status else ""))
            return "; ".join(parts)
        if self.error:
            return " ".join(self.error)[:2000]
        return f"cwltool exited with code {code}"


class CwlRun:
    """One cwltool run of a job directory."""

    def __init__(self, job_dir: Path, context: EngineContext, *,
                 python: str | None = None) -> None:
        self.job_dir = job_dir
        self.context = context
        self.python = python
        self.process: subprocess.Popen | None = None
        self.stopped = False

    def request_stop(self, signum=None, frame=None) -> None:
        self.stopped = True
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except OSError:
                pass

    def run(self) -> tuple[int, str | None]:
        """(the exit code, the reason when it did not finish)."""
        job_dir = self.job_dir
        data = (job_dir / document.DOCUMENT).read_bytes()
        try:
            doc = document.parse(data)
            problems = document.problems(doc)
            process = document.main_process(doc) if not problems else None
        except document.DocumentError as e:
            problems, process = [str(e)], None
        if problems:
            error = "invalid workflow: " + "; ".join(problems)
            self.context.emit({"type": "error", "message": error, "problems": problems})
            return EXIT_FAILED, error
        parameters = _read_json(job_dir / "parameters.json")
        order = document.job_order(process, parameters, job_dir / "inputs")
        (job_dir / document.JOB_ORDER).write_text(json.dumps(order, indent=1))
        for part in ("outputs", "tmp", "tmpout", "products"):
            (job_dir / part).mkdir(exist_ok=True)
        log = StepLog(self.context, document.steps(process))
        command = cwltool_command(
            *CWLTOOL_FLAGS, "--preserve-environment", JOB_MARKER,
            "--outdir", str(job_dir / "outputs"),
            "--tmpdir-prefix", f"{job_dir / 'tmp'}/",
            "--tmp-outdir-prefix", f"{job_dir / 'tmpout'}/",
            str(job_dir / document.DOCUMENT), str(job_dir / document.JOB_ORDER),
            python=self.python)
        self.context.progress(0.0)
        self.process = subprocess.Popen(
            command, cwd=job_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        if self.stopped:  # SIGTERM came while it was starting
            self.request_stop()
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(self.process.stdout.read()),
                                  daemon=True)
        reader.start()
        for raw in self.process.stderr:
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            print(text, file=sys.stderr, flush=True)  # the job's engine.log
            log.line(text)
        code = self.process.wait()
        reader.join()
        if self.stopped or code == CWLTOOL_TERMINATED:
            return EXIT_STOPPED, "stopped"
        if code != EXIT_FINISHED:
            error = log.failure(code)
            self.context.emit({"type": "error", "message": error})
            return (code if code in (EXIT_FAILED, EXIT_UNSUPPORTED) else EXIT_FAILED), error
        try:
            outputs = json.loads(b"".join(out) or b"{}")
        except ValueError as e:
            error = f"cwltool's output object is not JSON: {e}"
            self.context.emit({"type": "error", "message": error})
            return EXIT_FAILED, error
        try:
            results = Products(self.context).collect(outputs)
        except OutputOutside as e:
            self.context.emit({"type": "error", "message": str(e)})
            return EXIT_FAILED, str(e)
        tmp = job_dir / (RESULTS + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, job_dir / RESULTS)
        self.context.progress(1.0)
        return EXIT_FINISHED, None


class OutputOutside(Exception):
    """An output File that is not in the job's outputs/ directory."""


class Products:
    """Every File of an output object becomes a product of the job."""

    def __init__(self, context: EngineContext) -> None:
        self._context = context
        self._outputs = (context.job_dir / "outputs").resolve()
        self._names: set[str] = set()

    def collect(self, outputs: Any, output: str = "") -> Any:
        """The output object with each File's location replaced by its product."""
        if isinstance(outputs, list):
            return [self.collect(item, output) for item in outputs]
        if not isinstance(outputs, dict):
            return outputs
        if outputs.get("class") == "File":
            return self._file(outputs, output)
        if outputs.get("class") == "Directory":
            listing = [self.collect(item, output) for item in outputs.get("listing", [])]
            return {"class": "Directory", "basename": outputs.get("basename"),
                    "listing": listing}
        return {key: self.collect(value, output or key) for key, value in outputs.items()}

    def _file(self, entry: dict[str, Any], output: str) -> dict[str, Any]:
        source = Path(entry.get("path") or entry["location"].removeprefix("file://"))
        # cwltool moves every output into outputs/; anything else is no product.
        if self._outputs not in source.resolve().parents:
            raise OutputOutside(f"output {output}: {source} is not in the job's outputs/")
        name = self._name(entry.get("basename") or source.name, output)
        target = self._context.product_path(output, name)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        self._context.product_written(output, name)
        described = {key: entry[key] for key in ("class", "basename", "nameroot", "nameext",
                                                 "checksum", "size") if key in entry}
        described["product"] = name
        if entry.get("secondaryFiles"):
            described["secondaryFiles"] = self.collect(entry["secondaryFiles"], output)
        return described

    def _name(self, basename: str, output: str) -> str:
        """A product name: the file's, unique, safe (the output id first on a clash)."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", basename).lstrip("._-") or "output"
        name, n = safe, 1
        while name in self._names or not PRODUCT_NAME.match(name):
            n += 1
            name = f"{output or 'output'}-{n}-{safe}"[-200:].lstrip("._-")
        self._names.add(name)
        return name


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    value = json.loads(path.read_text("utf-8"))
    return value if isinstance(value, dict) else {}


def run_job(job_dir: Path, *, use_fd3: bool = True, install_signals: bool = True,
            contained: SandboxSpec | None = None, python: str | None = None) -> int:
    """
    Run the CWL job in C{job_dir}; the exit code (also in the final end event).

    @param contained: the sandbox to enter first (kree.engine.sandbox).
    """
    job_dir = Path(job_dir).resolve()
    events = EventWriter(job_dir, use_fd3=use_fd3)
    if contained is not None and not enter_sandbox(contained, events):
        return EXIT_FAILED
    context = EngineContext(job_dir, events)
    run = CwlRun(job_dir, context, python=python)
    if install_signals:
        signal.signal(signal.SIGTERM, run.request_stop)
    code, error = EXIT_FAILED, None
    try:
        code, error = run.run()
    except OSError as e:
        error = f"{e.filename or 'job directory'}: {e.strerror}" if e.strerror else str(e)
        context.emit({"type": "error", "message": error})
    except Exception as e:  # an engine bug: the job fails with a clear reason
        error = f"internal engine error: {type(e).__name__}: {e}"
        context.emit({"type": "error", "message": error})
    finally:
        if run.process is not None and run.process.poll() is None:
            run.request_stop()
            run.process.wait()
        if code != EXIT_FINISHED:
            # Only a finished run has an output object; nothing a tool wrote there counts.
            (job_dir / RESULTS).unlink(missing_ok=True)
    state = {EXIT_FINISHED: "finished", EXIT_STOPPED: "stopped"}.get(code, "failed")
    context.emit({"type": "end", "exit_code": code, "state": state, "error": error})
    events.close()
    return code
