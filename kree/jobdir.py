"""
A job directory (DESIGN.md section 5): preparing it for its engine
(the workflow document under its kind's name, workflow.xml or workflow.cwl,
which tells the backends which engine to start; parameters.json,
policy.json, inputs/, products/, answers/), and reading what the engine
left there (L{products}, L{product_path}, L{read_outputs}, L{read_uploads}).

Blocking file work: callers run it in a thread.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs

from kree.engines import kind_of
from kree.errors import KreeError
from kree.jobspec import INPUT_NAME


class PreparationFailed(KreeError):
    status = 422
    code = "preparation_failed"


class ProductNotFound(KreeError):
    status = 404
    code = "product_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no product {name!r}", product=name)


@attrs.frozen
class Product:
    """A file the engine left in products/."""

    name: str
    size: int
    media_type: str


def media_type_of(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def products(job_dir: Path) -> list[Product]:
    """The regular files of products/ (no symbolic links, no dot files), by name."""
    products_dir = Path(job_dir) / "products"
    if not products_dir.is_dir():
        return []
    found = []
    for path in sorted(products_dir.iterdir()):
        if path.is_symlink() or not path.is_file() or path.name.startswith("."):
            continue
        found.append(Product(path.name, path.stat().st_size, media_type_of(path.name)))
    return found


def product_path(job_dir: Path, name: str) -> Path:
    """
    The file of product C{name}, only a regular file directly in products/.

    @raise ProductNotFound: there is none by that name (or the name is not one).
    """
    # Product names are file names in products/: no separators, no dot files.
    if not INPUT_NAME.match(name) or ".." in name:
        raise ProductNotFound(name)
    products_dir = Path(job_dir) / "products"
    path = products_dir / name
    if not (path.is_file() and not path.is_symlink()
            and path.resolve().parent == products_dir.resolve()):
        raise ProductNotFound(name)
    return path


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
    data = workflow.read_bytes()
    _write(job_dir / kind_of(data).document_name, data)
    _write(job_dir / "parameters.json", json.dumps(parameters).encode())
    _write(job_dir / "policy.json", json.dumps(policy).encode())
    for name, source in inputs.items():
        target = job_dir / "inputs" / name
        if target.parent != job_dir / "inputs":
            raise PreparationFailed(f"input name {name!r} would leave the job directory")
        shutil.copyfile(source, target)


#: The output object an engine leaves (CWL: cwltool's, each File naming its product).
RESULTS_FILE = "results.json"


#: What kreed reads of it: the job directory is the engine account's, so
#: workflow code could write anything there.
MAX_RESULTS_BYTES = 16 * 1024 * 1024
MAX_RESULTS_DEPTH = 64


def read_outputs(job_dir: Path) -> dict[str, Any]:
    """
    The engine's outputs by name; empty when it left none (MoML), none yet,
    or a file larger or deeper than kreed reads.
    """
    path = Path(job_dir) / RESULTS_FILE
    try:
        if path.is_symlink() or path.stat().st_size > MAX_RESULTS_BYTES:
            return {}
        outputs = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(outputs, dict) or _depth(outputs) > MAX_RESULTS_DEPTH:
        return {}
    return outputs


def _depth(value: Any) -> int:
    """How deeply C{value} nests lists and objects (without recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_RESULTS_DEPTH:
                return depth
            todo.extend((child, depth + 1)
                        for child in (node.values() if isinstance(node, dict) else node))
    return deepest


UPLOADS_FILE = ".uploads.json"


def record_uploads(job_dir: Path, outcomes: list[dict[str, Any]]) -> None:
    """Where each product went (shown in the results document)."""
    _write(job_dir / UPLOADS_FILE, json.dumps(outcomes, indent=1).encode())


def read_uploads(job_dir: Path) -> list[dict[str, Any]] | None:
    """Where the products went (outputs_to), as recorded; None if nothing was."""
    try:
        return json.loads((Path(job_dir) / UPLOADS_FILE).read_text())
    except (OSError, ValueError):
        return None
