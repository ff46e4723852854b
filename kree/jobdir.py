"""
Preparing a job directory for its engine (DESIGN.md section 5):
workflow.xml, parameters.json, policy.json, inputs/, products/, answers/.

Blocking file work: the supervisor runs it in a thread.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kree.errors import KreeError


class PreparationFailed(KreeError):
    status = 422
    code = "preparation_failed"


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def prepare(job_dir: Path, *, workflow: Path, parameters: dict[str, Any],
            policy: dict[str, str], inputs: dict[str, Path]) -> None:
    """
    Write the job directory.  C{inputs} maps input names (checked at
    creation: plain file names) to staged files in the cache; each is
    copied in, so the job keeps its data whatever the cache does later.
    """
    if not workflow.is_file():
        raise PreparationFailed("the workflow version this job was created with is no "
                                "longer in the cache (purged?)")
    job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for part in ("products", "inputs", "answers"):
        (job_dir / part).mkdir(mode=0o700, exist_ok=True)
    _write(job_dir / "workflow.xml", workflow.read_bytes())
    _write(job_dir / "parameters.json", json.dumps(parameters).encode())
    _write(job_dir / "policy.json", json.dumps(policy).encode())
    for name, source in inputs.items():
        target = job_dir / "inputs" / name
        if target.parent != job_dir / "inputs":
            raise PreparationFailed(f"input name {name!r} would leave the job directory")
        shutil.copyfile(source, target)


UPLOADS_FILE = ".uploads.json"


def record_uploads(job_dir: Path, outcomes: list[dict[str, Any]]) -> None:
    """Where each product went (shown in the results document)."""
    _write(job_dir / UPLOADS_FILE, json.dumps(outcomes, indent=1).encode())
