"""
The engine's files that every backend reads or writes (DESIGN.md section 5):
JOBDIR/events.jsonl, read from the last line the store applied, and
JOBDIR/answers/<n>.json, the answer channel for engines without a pipe
(re-adopted ones, and every engine on a batch system).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class EventTail:
    """Reads the complete new lines of an events file, skipping the first N."""

    def __init__(self, path: Path, skip: int) -> None:
        self.path = path
        self.consumed = skip
        self._skip = skip
        self._offset = 0
        self._partial = b""
        self.saw_end = False

    def read(self) -> list[dict[str, Any]]:
        """Blocking (call in a thread): the new complete lines, parsed."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(4 * 1024 * 1024)
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        lines = []
        for raw in complete:
            if self._skip:
                self._skip -= 1
                continue
            self.consumed += 1
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"type": "message", "level": "warning", "actor": "kree",
                        "text": "the engine wrote an unreadable event line"}
            if not isinstance(line, dict):
                # One record for every line consumed, so counts stay in step.
                line = {"type": "message", "level": "warning", "actor": "kree",
                        "text": "the engine wrote an event line that is not an object"}
            if line.get("type") == "end":
                self.saw_end = True
            lines.append(line)
        return lines


def write_answer_file(job_dir: Path, n: int, line: bytes) -> None:
    """Answer C{n} as JOBDIR/answers/<n>.json, atomically (temp file, then rename)."""
    answers = job_dir / "answers"
    # Readable by the engine, which may run under an account of its own (kree.sandbox).
    answers.mkdir(mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=answers, prefix=f".{n}-")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(line)
    os.replace(tmp, answers / f"{n}.json")
