"""
The feasibility check, a use case of the job service: "can you run this
workflow with these inputs, and when?" (the IVOA Execution Broker's
question), answered without creating a job.  The checks are those of job
creation (L{JobService.fetch_and_check}: an upload must be the frontend's
own, the workflow fetched and validated by the engine with the admin's
actor policy and the software here; parameter names), plus resources
against this machine and the configured limits, and data locality: inputs
already in the cache need no staging.  A batch backend says whether its
cluster would take the job and when it expects to start it
(L{Backend.test_submission}).  A check that hits a C{[validation]} limit is
a reason; when all checkers are busy, L{CheckerBusy} (503) is raised: no
verdict, the caller should ask again.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import attrs
import psutil

from kree.backends import Backend
from kree.errors import KreeError
from kree.jobs import Guard, JobService, ParameterLocks, ResourceRules
from kree.store import Store
from kree.validation import CheckerBusy, InvalidWorkflow


@attrs.frozen
class FeasibilityRequest:
    """A job as it would be submitted, its fields already parsed (kree.jobspec)."""

    frontend_id: int
    workflow: str
    parameters: dict[str, Any] = attrs.field(factory=dict)
    inputs: dict[str, str] = attrs.field(factory=dict)
    #: With the walltime limits applied.
    resources: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Feasibility:
    feasible: bool
    #: "now", "after_staging", or None when it is not feasible.
    start: str | None
    #: Unknown (None) until fetched: sizes of inputs not in the cache are not known.
    estimated_staging_seconds: float | None
    #: Per input: "cached" or "to_fetch".
    inputs: dict[str, str]
    free_slots: int
    backend: str
    estimated_start: str | None
    #: This frontend's own queued jobs; others' work is not its to see.
    queue_length: int
    reasons: list[str]


class FeasibilityService:
    def __init__(self, store: Store, jobs: JobService, *, backends: Mapping[str, Backend],
                 free_slots: Callable[[str], int], default_backend: str,
                 locks: ParameterLocks = ParameterLocks(),
                 sandbox: ResourceRules | None = None) -> None:
        self._store = store
        self._jobs = jobs
        self._backends = backends
        self._free_slots = free_slots
        self._default_backend = default_backend
        self._locks = locks
        self._sandbox = sandbox

    async def check(self, request: FeasibilityRequest, *,
                    guard: Guard | None = None) -> Feasibility:
        """@raise CheckerBusy: every workflow checker is busy (503, Retry-After)."""
        reasons: list[str] = []
        try:
            # The checks of job creation, wrapped by the guard (cancelled if the client leaves).
            _, checked = await self._jobs.fetch_and_check(request.frontend_id, request.workflow,
                                                          guard=guard)
            reasons += [f"parameter {name}: the workflow has no such parameter"
                        for name in sorted(request.parameters) if name not in checked.parameters]
            reasons += [f"parameter {name}: holds code the actor runs, which frontends may not "
                        "set on this server"
                        for name in sorted(request.parameters) if name in checked.parameters
                        and self._locks.locked(checked.parameters[name])]
        except CheckerBusy:
            raise
        except InvalidWorkflow as e:
            reasons += [f"workflow: {problem}" for problem in e.details.get("problems", [])]
        except KreeError as e:
            reasons.append(f"workflow: {e.message}")

        resources = request.resources
        if self._sandbox is not None:
            frontend = await self._store.frontends.by_id(request.frontend_id)
            try:
                self._sandbox.check_resources(resources, frontend.name if frontend else "")
            except KreeError as e:
                reasons.append(e.message)  # it names the resource
        backend = resources.get("backend", self._default_backend)
        offered = self._backends.get(backend)
        estimated_start = None
        if offered is None:
            reasons.append(f"backend {backend}: not available on this server "
                           f"(offered: {', '.join(self._backends)})")
        if offered is None or offered.on_this_machine:
            # A batch system judges the CPUs and memory of its own nodes.
            reasons += self._machine_reasons(resources)
        if offered is not None:
            estimated_start, refusal = await offered.test_submission(resources)
            if refusal:
                reasons.append(f"backend {backend}: {refusal}")

        # "cached" only for what this frontend's own jobs brought in: what
        # other frontends fetched is not this one's to learn.
        inputs = request.inputs
        used = await self._store.ownership.input_uris_used(request.frontend_id,
                                                           sorted(set(inputs.values())))
        staging: dict[str, str] = {}
        for name, uri in inputs.items():
            entry = await self._store.cache.get(uri) if uri in used else None
            staging[name] = "cached" if entry is not None else "to_fetch"
        to_fetch = [name for name, where in staging.items() if where == "to_fetch"]
        queued = (await self._store.jobs.count_by_state(
            frontend_id=request.frontend_id)).get("QUEUED", 0)
        return Feasibility(
            feasible=not reasons,
            start=None if reasons else ("after_staging" if to_fetch else "now"),
            estimated_staging_seconds=0 if not to_fetch else None,
            inputs=staging,
            free_slots=self._free_slots(backend) if offered is not None else 0,
            backend=backend,
            estimated_start=None if reasons else estimated_start,
            queue_length=queued,
            reasons=reasons,
        )

    @staticmethod
    def _machine_reasons(resources: dict[str, Any]) -> list[str]:
        reasons = []
        cores = os.cpu_count() or 1
        if resources.get("cpus", 1) > cores:
            reasons.append(f"cpus {resources['cpus']}: this machine has {cores}")
        memory = psutil.virtual_memory().total
        if resources.get("memory", 0) > memory:
            reasons.append(f"memory {resources['memory']} bytes: this machine has {memory}")
        return reasons
