"""
Reading a CWL document without running it: parsing (YAML or JSON, safely),
the process a packed document runs (C{$graph} with C{#main}), its inputs
(the job's parameters), its steps (progress), references to other documents
(not supported yet) and the job order a job directory gives it.

Pure functions on data; nothing here runs cwltool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

#: The file a job directory holds its CWL document in.
DOCUMENT = "workflow.cwl"
#: The job order the engine writes for cwltool.
JOB_ORDER = "job.json"

# Keys whose string values name other documents: cwltool would fetch them
# (over the network too).  kreed will fetch them through its guarded fetcher
# one day; until then a document must be self-contained.
_REFERENCE_KEYS = ("run", "$import", "$include", "$schemas", "$mixin")


class DocumentError(Exception):
    """Not a CWL document this engine can read."""


@attrs.frozen
class Input:
    """One input of the process: a parameter of the job."""

    name: str
    type: str
    default: Any = None
    has_default: bool = False
    doc: str | None = None

    @property
    def is_file(self) -> bool:
        return self.type.rstrip("?") in ("File", "Directory")

    def parameter_row(self) -> dict[str, Any]:
        """The row of the engines' parameter table (kree.engine's validate/params shape)."""
        if not self.has_default or self.default is None:
            default = None
        elif isinstance(self.default, str):
            default = self.default
        else:
            default = json.dumps(self.default)
        row = {"name": self.name, "default": default,
               "string": isinstance(self.default, str) or self.type.rstrip("?") == "string",
               "type": self.type}
        if self.doc:
            row["doc"] = self.doc
        return row


def parse(data: bytes) -> dict[str, Any]:
    """
    The document as data: YAML (JSON is YAML) by a safe loader, which builds
    plain mappings, lists and scalars and never objects.

    @raise DocumentError: not YAML, not a mapping, or no C{cwlVersion}.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(f"not UTF-8 text: {e}") from None
    try:
        document = YAML(typ="safe", pure=True).load(text)
    except YAMLError as e:
        raise DocumentError(f"not YAML or JSON: {e}") from None
    except RecursionError:
        raise DocumentError("the document is nested too deeply") from None
    if not isinstance(document, dict):
        raise DocumentError("a CWL document is a mapping (with cwlVersion and class)")
    if "cwlVersion" not in document:
        raise DocumentError("not a CWL document: it has no cwlVersion")
    return document


def main_process(document: dict[str, Any]) -> dict[str, Any]:
    """
    The process the document runs: itself, or in a packed document (C{$graph})
    the one with id C{#main} (or C{main}), or its only process.

    @raise DocumentError: a C{$graph} without one to run.
    """
    graph = document.get("$graph")
    if graph is None:
        return document
    if not isinstance(graph, list) or not all(isinstance(p, dict) for p in graph):
        raise DocumentError("$graph must be a list of processes")
    for process in graph:
        if str(process.get("id", "")).lstrip("#") == "main":
            return process
    if len(graph) == 1:
        return graph[0]
    raise DocumentError("a packed document ($graph) needs a process with id #main")


def short_id(identifier: Any) -> str:
    """C{#main/message} or C{file:///x.cwl#message} -> C{message}."""
    text = str(identifier)
    return text.rsplit("#", 1)[-1].rsplit("/", 1)[-1]


def type_text(cwl_type: Any) -> str:
    """A CWL type as text: C{string}, C{File?}, C{int[]}, C{string | int}."""
    if isinstance(cwl_type, str):
        return cwl_type
    if isinstance(cwl_type, list):
        names = [type_text(t) for t in cwl_type]
        if "null" in names and len(names) == 2:
            return next(n for n in names if n != "null") + "?"
        return " | ".join(names)
    if isinstance(cwl_type, dict):
        kind = cwl_type.get("type")
        if kind == "array":
            items = type_text(cwl_type.get("items", "Any"))
            return (f"({items})" if " | " in items else items) + "[]"
        if kind == "enum":
            return "enum(" + ", ".join(short_id(s) for s in cwl_type.get("symbols", [])) + ")"
        if kind == "record":
            return "record"
        return type_text(kind)
    return "Any"


def _entries(section: Any) -> Iterator[tuple[str, Any]]:
    """A CWL list-or-map section (inputs, outputs, steps) as (id, body) pairs."""
    if isinstance(section, dict):
        for key, body in section.items():
            yield short_id(key), body
    elif isinstance(section, list):
        for body in section:
            if isinstance(body, dict) and "id" in body:
                yield short_id(body["id"]), body


def inputs(process: dict[str, Any]) -> list[Input]:
    """The process's inputs, in document order."""
    found = []
    for name, body in _entries(process.get("inputs")):
        if not isinstance(body, dict):
            body = {"type": body}  # the short form: `message: string`
        doc = body.get("doc")
        if isinstance(doc, list):
            doc = "\n".join(map(str, doc))
        found.append(Input(name=name, type=type_text(body.get("type", "Any")),
                           default=body.get("default"), has_default="default" in body,
                           doc=str(doc) if doc is not None else None))
    return found


def steps(process: dict[str, Any]) -> list[str]:
    """The ids of a Workflow's steps (none for a tool)."""
    return [name for name, _ in _entries(process.get("steps"))]


def references(document: Any) -> list[str]:
    """
    Every reference to another document (C{run: other.cwl}, C{$import}, ...),
    walked once per object so YAML aliases cannot make the walk explode.
    """
    found: list[str] = []
    seen: set[int] = set()
    todo = [document]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _REFERENCE_KEYS and isinstance(value, (str, list)) and not (
                        key == "run" and isinstance(value, list)):
                    found.extend([value] if isinstance(value, str) else map(str, value))
                elif isinstance(value, (dict, list)):
                    todo.append(value)
        elif isinstance(node, list):
            todo.extend(v for v in node if isinstance(v, (dict, list)))
    # A packed document's run: "#step-tool" names a process of its own $graph.
    return sorted({ref for ref in found if not ref.startswith("#")})


def problems(document: dict[str, Any]) -> list[str]:
    """What keeps this engine from running the document (before cwltool looks at it)."""
    found = []
    try:
        main_process(document)
    except DocumentError as e:
        found.append(str(e))
    refs = references(document)
    if refs:
        found.append("references to other documents are not supported yet (the document "
                     "must be self-contained, or packed with cwltool --pack): "
                     + ", ".join(refs[:10]))
    return found


def job_order(process: dict[str, Any], parameters: dict[str, Any],
              inputs_dir: Path) -> dict[str, Any]:
    """
    The job order for cwltool: each input set by the job's parameters (by
    input id), and each File or Directory input whose name is a staged
    input's (C{inputs/<name>}) given as that local path.  Unset inputs keep
    their defaults (cwltool applies them).
    """
    order: dict[str, Any] = {}
    for item in inputs(process):
        staged = inputs_dir / item.name
        if item.is_file and staged.exists():
            order[item.name] = {"class": "Directory" if staged.is_dir() else "File",
                                "path": str(staged)}
        elif item.name in parameters:
            order[item.name] = parameters[item.name]
    return order
