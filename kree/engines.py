"""
Engine kinds, as the daemon sees them: which programs run workflows and how
each is started.  The engines themselves (kree.engine for MoML) are separate
programs that never import the daemon (the import contracts say so); this
module is the daemon's one place that knows their command lines.

An L{EngineKind} builds every command the daemon runs of it: C{run} for a job directory (the local and the
Slurm backends), C{validate} for the workflow check (kree.validation), and
the information commands (C{actors}, C{software}) behind GET /v1/capabilities
and kree-admin.  L{EngineCatalog} is what the engines offer, as
GET /v1/capabilities shows it.  Two kinds: MoML (Ptolemy II / Kepler models,
kree.engine) and CWL (kree.cwl, which runs cwltool).

Which kind a document is, is read from its content (L{kind_of}): MoML is
XML, CWL is YAML or JSON with C{cwlVersion}.  A job's kind is its workflow
document's, which never changes (the cache keeps it by its SHA-256), so no
job record stores it: preparation writes the document into the job
directory under its kind's name (C{workflow.xml}, C{workflow.cwl}) and the
backends start the kind the directory holds (L{kind_in}).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import attrs
import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from kree.cwl import document as cwl_document
from kree.errors import EngineUnavailable, KreeError
from kree.store import Store


class InvalidDocument(KreeError):
    """An uploaded document that is not a workflow of the engine kind it was sent as."""

    status = 422
    code = "invalid_workflow"


@attrs.frozen
class EngineKind:
    #: Its name in job records and messages ("moml").
    name: str
    #: The Python module that is the engine program (run with C{python -m}).
    module: str
    #: The file a job directory holds the workflow document in.
    document_name: str = "workflow.xml"

    #: Media types an upload of this kind is sent as (POST /v1/workflows),
    #: and a suffix that names more of them ("+xml").
    media_types: tuple[str, ...] = ()
    media_suffix: str | None = None
    #: The cheap check of an uploaded document before it is stored (the
    #: engine's full check comes when a job names it); raises InvalidDocument.
    upload_check: Callable[[bytes], None] | None = None

    def accepts(self, media_type: str) -> bool:
        return media_type in self.media_types or bool(
            self.media_suffix and media_type.endswith(self.media_suffix))

    def check_upload(self, data: bytes) -> None:
        """@raise InvalidDocument: C{data} is not a document of this kind."""
        if self.upload_check is not None:
            self.upload_check(data)

    def command(self, verb: str, *args: str, python: str | None = None) -> list[str]:
        """C{python -m MODULE VERB ARGS...}: any engine command, as an argument list."""
        return [python or sys.executable, "-m", self.module, verb, *args]

    def run_command(self, job_dir: Path | str, *, python: str | None = None,
                    events_fd: bool = True) -> list[str]:
        """
        Run the job in C{job_dir}; with C{events_fd}, the engine also writes
        its events to fd 3 (the local backend reads them there); without, only
        to events.jsonl (batch systems, where no pipe reaches the node).
        """
        return self.command("run", *(() if events_fd else ("--no-events-fd",)), str(job_dir),
                            python=python)

    def run_script_line(self, job_dir: Path | str, *, python: str | None = None) -> str:
        """The C{exec} line of a batch script that runs the job (no events fd)."""
        return "exec " + shlex.join(self.run_command(job_dir, python=python, events_fd=False))

    def validate_command(self, document: Path | str, *, max_memory_bytes: int,
                         python: str | None = None) -> list[str]:
        """Check a document against the policy given on stdin, in a session of its own."""
        return self.command("validate", str(document), "--policy", "-",
                            "--max-memory", str(max_memory_bytes), "--new-session",
                            python=python)


def check_moml(data: bytes) -> None:
    """
    Well-formed MoML (root C{<entity>} or C{<class>}), parsed with defusedxml:
    the DOCTYPE line real MoML files carry is accepted and never fetched,
    entity declarations are refused.

    @raise InvalidDocument: naming what is wrong.
    """
    try:
        root = DefusedET.fromstring(
            data, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException as e:
        raise InvalidDocument(f"refused XML construct: {e}") from None
    except DefusedET.ParseError as e:
        raise InvalidDocument(f"not well-formed XML: {e}") from None
    except RecursionError:
        raise InvalidDocument("the document is nested too deeply") from None
    if root.tag not in ("entity", "class"):
        raise InvalidDocument(
            f"not a MoML workflow: the root element is <{root.tag}>, not <entity>")


def check_cwl(data: bytes) -> None:
    """
    A CWL document: YAML or JSON (parsed by a safe loader, which builds no
    objects), a mapping with C{cwlVersion}; a packed one (C{$graph}) has a
    process to run (C{#main}).  The engine's full check (cwltool's) comes
    when a job names it.

    @raise InvalidDocument: naming what is wrong.
    """
    try:
        cwl_document.main_process(cwl_document.parse(data))
    except cwl_document.DocumentError as e:
        raise InvalidDocument(str(e)) from None


#: Ptolemy II and Kepler models (MoML), run by kree.engine.
MOML = EngineKind(name="moml", module="kree.engine",
                  media_types=("application/xml", "text/xml", "application/x-moml+xml"),
                  media_suffix="+xml", upload_check=check_moml)

#: Common Workflow Language documents, run by kree.cwl (cwltool).
CWL = EngineKind(name="cwl", module="kree.cwl", document_name=cwl_document.DOCUMENT,
                 media_types=("application/cwl", "application/cwl+yaml", "application/cwl+json",
                              "application/yaml", "text/yaml", "application/x-yaml",
                              "application/json"),
                 upload_check=check_cwl)

#: Every engine kind, by name.
ENGINE_KINDS: dict[str, EngineKind] = {MOML.name: MOML, CWL.name: CWL}


def kind_for_media_type(media_type: str) -> EngineKind | None:
    """The kind an upload sent as C{media_type} is, or None."""
    return next((kind for kind in ENGINE_KINDS.values() if kind.accepts(media_type)), None)


# How much of a document L{kind_of} looks at: past a byte-order mark, comments
# and blank lines, to its first construct.
_SNIFF_BYTES = 65536


def kind_of(data: bytes) -> EngineKind:
    """
    The kind of a document, by its content: XML (its first character C{<})
    is MoML; YAML or JSON naming C{cwlVersion} or C{$graph} (a packed
    document, as cwltool --pack writes it, has cwlVersion after its graph)
    is CWL; anything else is given to MoML, whose check says what is wrong
    with it (as before there were two kinds).
    """
    head = data[:_SNIFF_BYTES].lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<"):
        return MOML
    if b"cwlVersion" in head or b"$graph" in head:
        return CWL
    return MOML


def kind_of_file(path: Path | str) -> EngineKind:
    """L{kind_of} the document at C{path} (blocking: in a thread)."""
    with open(path, "rb") as f:
        return kind_of(f.read(_SNIFF_BYTES))


def kind_in(job_dir: Path | str) -> EngineKind:
    """The kind of the job whose directory this is, by the document it holds (blocking)."""
    for kind in ENGINE_KINDS.values():
        if kind is not MOML and (Path(job_dir) / kind.document_name).exists():
            return kind
    return MOML


class EngineCatalog:
    """
    What the engine offers: its actor classes (asked of the engine program
    once: it loads actor packages, the daemon does not), the admin's policy
    over them, and the third-party software registry, which the engine fills
    when it is empty (C{kree-admin software rescan} refreshes it, so it is
    read each time).
    """

    log = Logger()

    def __init__(self, store: Store, reactor, kind: EngineKind = MOML) -> None:
        self._store = store
        self._reactor = reactor
        self._kind = kind
        self._actors: list[dict[str, Any]] | None = None

    async def _ask(self, command: str) -> Any:
        executable, *args = self._kind.command(command)
        out, err, code = await getProcessOutputAndValue(executable, args, reactor=self._reactor)
        if code != 0:
            self.log.error("{module} {command} failed ({code}): {err}", module=self._kind.module,
                           command=command, code=code, err=err.decode(errors="replace"))
            raise EngineUnavailable(f"the workflow engine failed ({code})")
        return json.loads(out)

    async def capabilities(self) -> dict[str, Any]:
        """
        C{actors} (each with the policy that applies to it), C{policy} (the
        admin's rules) and C{software}.

        @raise EngineUnavailable: the engine could not be asked (503).
        """
        if self._actors is None:
            self._actors = (await self._ask("actors"))["actors"]
        software = await self._store.policies.software()
        if not software:
            software = await self._ask("software")
            await self._store.policies.record_software(software)
        policy = await self._store.policies.all()
        actors = [{**actor, "policy": policy.get(actor["class"], actor["policy"])}
                  for actor in self._actors]
        return {"actors": actors, "policy": policy, "software": software}
