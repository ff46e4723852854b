"""
POST /v1/feasibility: "can you run this workflow with these inputs, and
when?", in JSON over L{kree.feasibility.FeasibilityService}; no job is
created.  When all checkers are busy the answer is 503 C{busy} (Retry-After).
"""

from __future__ import annotations

from typing import Any

import attrs

from kree import jobspec
from kree.errors import HttpError
from kree.feasibility import FeasibilityRequest, FeasibilityService
from kree.web.routing import Call, Router


class FeasibilityApi:
    def __init__(self, feasibility: FeasibilityService, *,
                 walltime: jobspec.WalltimeLimits, backends: tuple[str, ...],
                 installed: tuple[str, ...]) -> None:
        self._feasibility = feasibility
        self._walltime = walltime
        self._backends = backends
        self._installed = installed

    def register(self, router: Router) -> None:
        router.add("POST", "/v1/feasibility", self.feasibility)

    async def feasibility(self, call: Call) -> dict[str, Any]:
        body = call.json_object()
        unknown = sorted(set(body) - {"workflow", "parameters", "inputs", "resources"})
        if unknown:
            raise HttpError(422, "invalid_request", f"unknown fields {unknown}", unknown=unknown)
        request = FeasibilityRequest(
            frontend_id=call.frontend.id,
            workflow=jobspec.check_uri(body.get("workflow")),
            parameters=jobspec.check_parameters(body.get("parameters")),
            inputs=jobspec.check_inputs(body.get("inputs")),
            # A backend installed here but not enabled is a reason, not a 422.
            resources=self._walltime.apply(jobspec.check_resources(
                body.get("resources"), self._backends, installed=self._installed)))
        answer = await self._feasibility.check(request, guard=call.while_connected)
        return attrs.asdict(answer)
