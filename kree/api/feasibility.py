"""
POST /v1/feasibility: "can you run this workflow with these inputs, and
when?" (the IVOA Execution Broker's question), answered without creating a
job.  The checks are those of job creation (JobService.fetch_and_check: an
upload must be the frontend's own, the workflow fetched and validated by the
engine with the admin's actor policy and the software here; parameter
names), plus resources against this machine and the configured
limits, and data locality: inputs already in the cache need no staging.
A backend's test_submission (Slurm's: C{sbatch --test-only}) says whether it
would take the job and when it expects to start it.  A check that hits a C{[validation]} limit is
a reason; when all checkers are busy the answer is 503 C{busy} (Retry-After).
"""

from __future__ import annotations

import os
from typing import Any

import psutil

from kree import jobspec
from kree.api.resource import ApiError, Call, Router
from kree.errors import KreeError
from kree.validation import CheckerBusy, InvalidWorkflow


class FeasibilityApi:
    def __init__(self, config, store, jobs, supervisor) -> None:
        self._config = config
        self._store = store
        self._jobs = jobs
        self._supervisor = supervisor

    def register(self, router: Router) -> None:
        router.add("POST", "/v1/feasibility", self.feasibility)

    async def feasibility(self, call: Call) -> dict[str, Any]:
        body = call.json_object()
        unknown = sorted(set(body) - {"workflow", "parameters", "inputs", "resources"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown fields {unknown}", unknown=unknown)
        workflow = jobspec.check_uri(body.get("workflow"))
        parameters = jobspec.check_parameters(body.get("parameters"))
        inputs = jobspec.check_inputs(body.get("inputs"))
        # A backend installed here but not enabled is a reason, not a 422.
        resources = jobspec.WalltimeLimits.from_config(self._config.supervisor).apply(
            jobspec.check_resources(body.get("resources"), self._config.backends,
                                    installed=self._config.installed_backends))
        reasons: list[str] = []

        try:
            # The checks of job creation; the check is killed if the client leaves.
            _, checked = await self._jobs.fetch_and_check(call.frontend.id, workflow,
                                                          guard=call.while_connected)
            reasons += [f"parameter {name}: the workflow has no such parameter"
                        for name in sorted(parameters) if name not in checked.parameters]
        except CheckerBusy:
            raise  # 503: no verdict, the client should ask again
        except InvalidWorkflow as e:
            reasons += [f"workflow: {problem}" for problem in e.details.get("problems", [])]
        except KreeError as e:
            reasons.append(f"workflow: {e.message}")

        reasons += self._resource_reasons(resources)
        backend = resources.get("backend", self._config.supervisor.default_backend)
        estimated_start = None
        offered = self._supervisor.backends.get(backend)
        if offered is not None:
            estimated_start, refusal = await offered.test_submission(resources)
            if refusal:
                reasons.append(f"backend {backend}: {refusal}")

        # "cached" only for what this frontend's own jobs brought in: what
        # other frontends fetched is not this one's to learn.
        used = await self._store.ownership.input_uris_used(call.frontend.id,
                                                           sorted(set(inputs.values())))
        staging: dict[str, str] = {}
        for name, uri in inputs.items():
            entry = await self._store.cache.get(uri) if uri in used else None
            staging[name] = "cached" if entry is not None else "to_fetch"
        to_fetch = [name for name, where in staging.items() if where == "to_fetch"]
        free = self._supervisor.free_slots(backend)
        return {
            "feasible": not reasons,
            "start": None if reasons else ("after_staging" if to_fetch else "now"),
            # Unknown until fetched: sizes of inputs not in the cache are not known.
            "estimated_staging_seconds": 0 if not to_fetch else None,
            "inputs": staging,
            "free_slots": free,
            "backend": backend,
            "estimated_start": None if reasons else estimated_start,
            # This frontend's own queued jobs; others' work is not its to see.
            "queue_length": (await self._store.jobs.count_by_state(
                frontend_id=call.frontend.id)).get("QUEUED", 0),
            "reasons": reasons,
        }

    def _resource_reasons(self, resources: dict[str, Any]) -> list[str]:
        reasons = []
        backend = resources.get("backend", self._config.supervisor.default_backend)
        offered = self._supervisor.backends.get(backend)
        if backend not in self._config.backends:
            reasons.append(f"backend {backend}: not available on this server "
                           f"(offered: {', '.join(self._config.backends)})")
        elif offered is not None and not offered.on_this_machine:
            return reasons  # a batch system judges the CPUs and memory of its nodes
        cores = os.cpu_count() or 1
        if resources.get("cpus", 1) > cores:
            reasons.append(f"cpus {resources['cpus']}: this machine has {cores}")
        memory = psutil.virtual_memory().total
        if resources.get("memory", 0) > memory:
            reasons.append(f"memory {resources['memory']} bytes: this machine has {memory}")
        return reasons
