"""
Engine kinds, as the daemon sees them: which programs run workflows and how
each is started.  The engines themselves (kree.engine for MoML) are separate
programs that never import the daemon (the import contracts say so); this
module is the daemon's one place that knows their command lines.

An L{EngineKind} builds every command the daemon runs of it: C{run} for a job directory (the local and the
Slurm backends), C{validate} for the workflow check (kree.validation), and
the information commands (C{actors}, C{software}) behind GET /v1/capabilities
and kree-admin.  L{EngineCatalog} is what the engines offer, as
GET /v1/capabilities shows it.  Today there is one kind, MoML (Ptolemy II / Kepler models);
CWL comes next, and with a second kind, recognising which kind a document is.
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


#: Ptolemy II and Kepler models (MoML), run by kree.engine.
MOML = EngineKind(name="moml", module="kree.engine",
                  media_types=("application/xml", "text/xml", "application/x-moml+xml"),
                  media_suffix="+xml", upload_check=check_moml)

#: Every engine kind, by name.
ENGINE_KINDS: dict[str, EngineKind] = {MOML.name: MOML}


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
