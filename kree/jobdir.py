"""
Preparing a job directory for its engine (DESIGN.md section 5):
workflow.xml, parameters.json, policy.json, inputs/, products/, answers/.

Blocking file work: the supervisor runs it in a thread.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kree import jobspec
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


def workflow_source(uri: str, cache_dir: Path) -> Path:
    sha256 = jobspec.uploaded_workflow_sha256(uri)
    if sha256 is None:
        scheme = uri.split(":", 1)[0]
        raise PreparationFailed(
            f"{scheme}: workflows cannot be fetched by this version of KREE yet; "
            "upload the document with POST /v1/workflows and use its kree:workflow/ URI")
    path = cache_dir / sha256
    if not path.is_file():
        raise PreparationFailed(f"the uploaded workflow {uri} is missing from the cache")
    return path


def prepare(job_dir: Path, *, workflow: Path, parameters: dict[str, Any],
            policy: dict[str, str], inputs: list) -> None:
    if inputs:
        names = ", ".join(i.name for i in inputs)
        raise PreparationFailed(
            f"inputs ({names}) cannot be staged by this version of KREE yet")
    job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for part in ("products", "inputs", "answers"):
        (job_dir / part).mkdir(mode=0o700, exist_ok=True)
    _write(job_dir / "workflow.xml", workflow.read_bytes())
    _write(job_dir / "parameters.json", json.dumps(parameters).encode())
    _write(job_dir / "policy.json", json.dumps(policy).encode())
