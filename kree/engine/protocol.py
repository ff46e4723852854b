"""
The engine's side of the engine protocol (DESIGN.md section 5).

Events: one JSON object per line, appended and flushed to
C{JOBDIR/events.jsonl} first, then written to file descriptor 3 when the
daemon gave one.  The daemon may be gone (engines outlive it), so a broken
or missing fd 3 is not an error: the file is the record.  On a batch system
(C{run --no-events-fd}, as the Slurm backend starts engines) fd 3 is never
used, since the batch system may hold a descriptor of its own there; the
daemon tails the file in the shared job directory instead.

Answers: while waiting, the engine reads one JSON answer per line on stdin,
or takes C{JOBDIR/answers/<n>.json} (written atomically by the daemon or a
batch backend, where no pipe exists), whichever comes first.  C{n} is the
prompt's number in its C{waiting} event.  Under a batch system stdin is
/dev/null, so its end-of-file makes the engine watch only the answers
directory (every 0.1 s).

Stopping: SIGTERM sets a flag that the director checks between firings and
that interruptible waits (Sleep, waiting for an answer) watch; the current
firing finishes, products are flushed, and the engine exits with
L{EXIT_STOPPED}.

Exit codes: 0 finished, 1 failed, 2 usage, 3 stopped.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, IO

from kree.engine.model import StopRequested, WorkflowError

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3

EVENTS_FD = 3
PRODUCT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
MANIFEST = ".manifest.json"
# Progress events at most this often (seconds), besides the first and 100%.
PROGRESS_INTERVAL = 0.2


class EventWriter:
    """
    @param echo: also print each message's text there (kree-engine's
        Kepler-style runs show Display output on the terminal).
    """

    def __init__(self, job_dir: Path, *, use_fd3: bool = True, echo: IO[str] | None = None) -> None:
        # Look at fd 3 before opening anything: otherwise, when no daemon
        # gave us one, the events file itself would become fd 3.
        self._fd3: IO[bytes] | None = None
        if use_fd3:
            try:
                os.fstat(EVENTS_FD)
                self._fd3 = os.fdopen(EVENTS_FD, "wb", buffering=0)
            except OSError:
                self._fd3 = None
        self._file: IO[str] = open(job_dir / "events.jsonl", "a", encoding="utf-8")
        self._echo = echo

    def write(self, event: dict[str, Any]) -> None:
        event = {"time": round(time.time(), 6), **event}
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n"
        self._file.write(line)
        self._file.flush()
        if self._echo is not None:
            if event["type"] == "message":
                print(event["text"], file=self._echo, flush=True)
            elif event["type"] in ("error", "waiting"):
                print(f"{event['type']}: {event.get('message') or event.get('prompt')}",
                      file=self._echo, flush=True)
        if self._fd3 is not None:
            try:
                self._fd3.write(line.encode("utf-8"))
            except OSError:
                self._fd3 = None  # the daemon went away; the file keeps the record

    def close(self) -> None:
        self._file.close()
        if self._fd3 is not None:
            try:
                self._fd3.close()
            except OSError:
                pass


class EngineContext:
    """What actors may do beyond their ports: report, produce, ask, notice a stop."""

    def __init__(self, job_dir: Path, events: EventWriter | None, *,
                 software: dict[str, Any] | None = None, stdin_fd: int | None = None) -> None:
        self.job_dir = job_dir
        self.products_dir = job_dir / "products"
        self._events = events
        self.software = software or {}
        # Answers on stdin, read from the descriptor with our own buffer: a
        # buffered text stream would hide queued lines from select().
        self._stdin_fd = stdin_fd
        self._stdin_open = stdin_fd is not None
        self._stdin_buffer = b""
        self._prompts = 0
        self._stop = False
        self._last_progress = -1.0
        self._last_progress_time = 0.0
        self._manifest: dict[str, Any] = {}

    # -- stopping -------------------------------------------------------------

    def install_stop_handler(self) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: self.request_stop())

    def request_stop(self) -> None:
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def check_stop(self) -> None:
        if self._stop:
            raise StopRequested()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (StopRequested) when the engine is stopped."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_stop()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # -- events ------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        if self._events is not None:
            self._events.write(event)

    def message(self, actor: str, text: str, level: str = "info") -> None:
        self.emit({"type": "message", "actor": actor, "level": level, "text": text})

    def progress(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_progress_time < PROGRESS_INTERVAL:
            return
        if fraction == self._last_progress:
            return
        self._last_progress, self._last_progress_time = fraction, now
        self.emit({"type": "progress", "fraction": round(fraction, 4)})

    # -- products --------------------------------------------------------------

    def product_path(self, actor: str, name: str) -> Path:
        """Where product C{name} goes; names never escape products/."""
        if not PRODUCT_NAME.match(name) or ".." in name:
            raise WorkflowError(
                f"product name {name!r}: use letters, digits, '.', '_' and '-' only", actor)
        self.products_dir.mkdir(parents=True, exist_ok=True)
        return self.products_dir / name

    def product_written(self, actor: str, name: str) -> None:
        path = self.products_dir / name
        size = path.stat().st_size
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._manifest[name] = {"actor": actor, "size": size, "media_type": media_type}
        tmp = self.products_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self._manifest, indent=1))
        os.replace(tmp, self.products_dir / MANIFEST)
        self.emit({"type": "product", "actor": actor, "name": name, "size": size,
                   "media_type": media_type})

    def resolve_input(self, actor: str, name: str) -> Path:
        """A file the workflow reads: relative to the job directory, never outside it."""
        path = (self.job_dir / name).resolve()
        root = self.job_dir.resolve()
        if path != root and root not in path.parents:
            raise WorkflowError(f"file {name!r} is outside the job directory", actor)
        return path

    # -- software ----------------------------------------------------------------

    def has_software(self, name: str) -> bool:
        return bool(self.software.get(name))

    def software_path(self, name: str) -> str | None:
        entry = self.software.get(name)
        return entry["path"] if entry else None

    # -- asking the user -----------------------------------------------------------

    def ask(self, actor: str, prompt: dict[str, Any]) -> dict[str, Any]:
        """
        Put the job in WAITING with C{prompt} and block until an answer comes
        on stdin or as answers/<n>.json.
        """
        self._prompts += 1
        n = self._prompts
        self.emit({"type": "waiting", "actor": actor, "n": n, "prompt": prompt})
        answers_dir = self.job_dir / "answers"
        while True:
            self.check_stop()
            answer_file = answers_dir / f"{n}.json"
            if answer_file.exists():
                return self._decode_answer(actor, answer_file.read_text("utf-8"))
            line = self._read_stdin_line(0.1)
            if line is not None:
                return self._decode_answer(actor, line)
            if not self._stdin_open:
                time.sleep(0.1)

    def _read_stdin_line(self, timeout: float) -> str | None:
        while b"\n" not in self._stdin_buffer:
            if not self._stdin_open:
                return None
            try:
                ready, _, _ = select.select([self._stdin_fd], [], [], timeout)
                if not ready:
                    return None
                chunk = os.read(self._stdin_fd, 65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                self._stdin_open = False  # the daemon went away: answers come as files
                return None
            self._stdin_buffer += chunk
        line, _, self._stdin_buffer = self._stdin_buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace")

    @staticmethod
    def _decode_answer(actor: str, text: str) -> dict[str, Any]:
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkflowError(f"the answer is not JSON: {e}", actor) from None
        if not isinstance(answer, dict):
            raise WorkflowError("the answer must be a JSON object", actor)
        return answer


def stdin_fd() -> int | None:
    """Standard input's descriptor, if there is one to read answers from."""
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else 0
        os.fstat(fd)
        return fd
    except (OSError, ValueError):
        return None
