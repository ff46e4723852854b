"""
The workflow types WES offers: one per engine kind this KREE has
(kree.engines.ENGINE_KINDS), under the name and versions WES clients send.
A kind without an entry here is not offered through WES; an entry whose
kind is not installed is not listed.
"""

from __future__ import annotations

import attrs

from kree.engines import ENGINE_KINDS, EngineKind


@attrs.frozen
class WorkflowType:
    #: The name service-info lists and the run request echoes ("MoML").
    name: str
    versions: tuple[str, ...]
    kind: EngineKind


#: WES names and language versions of the engine kinds, by kind name.
_WES_NAMES = {
    # MoML has had one version (the "-//UC Berkeley//DTD MoML 1//EN" DTD).
    "moml": ("MoML", ("1.0",)),
    "cwl": ("CWL", ("v1.0", "v1.1", "v1.2")),
}


def workflow_types() -> dict[str, WorkflowType]:
    """The offered types, by their upper-case name (WES types match in any case)."""
    offered = {}
    for kind_name, (name, versions) in _WES_NAMES.items():
        kind = ENGINE_KINDS.get(kind_name)
        if kind is not None:
            offered[name.upper()] = WorkflowType(name, versions, kind)
    return offered
