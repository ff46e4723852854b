"""
Service-level endpoints: service-info, capabilities, feasibility, the
OpenAPI document, and the subscription endpoints until callbacks land.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from kree import __version__, jobspec
from kree.api.jobs import MAX_PAGE, MAX_WAIT_SECONDS
from kree.api.resource import ApiError, Call, Router
from kree.records import isoformat
from kree.states import JobState

NO_ENGINE = (
    "no workflow engine is installed in this version of KREE, so no workflow can run yet"
)


def openapi_document() -> dict[str, Any]:
    return json.loads(resources.files("kree.api").joinpath("openapi.json").read_text("utf-8"))


class InfoApi:
    def __init__(self, config, jobs) -> None:
        self._config = config
        self._jobs = jobs
        self._openapi = openapi_document()

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/service-info", self.service_info)
        router.add("GET", "/v1/capabilities", self.capabilities)
        router.add("POST", "/v1/feasibility", self.feasibility)
        router.add("GET", "/v1/openapi.json", self.openapi)
        for method, path in (("POST", "/v1/subscriptions"), ("GET", "/v1/subscriptions"),
                             ("GET", "/v1/subscriptions/{sid}"),
                             ("DELETE", "/v1/subscriptions/{sid}")):
            router.add(method, path, self.subscriptions,
                       "subscription.change" if method != "GET" else None)

    async def service_info(self, call: Call) -> dict[str, Any]:
        return {
            "name": "KREE",
            "version": __version__,
            "api_version": "v1",
            "frontend": call.frontend.name,
            "time": isoformat(self._jobs.now()),
            "states": [s.value for s in JobState],
            "engines": [],
            "backends": [],
            "limits": {
                "max_body_bytes": self._config.server.max_body_bytes,
                "max_page": MAX_PAGE,
                "max_wait_seconds": MAX_WAIT_SECONDS,
            },
        }

    async def capabilities(self, call: Call) -> dict[str, Any]:
        return {"engines": [], "actors": [], "software": [], "backends": []}

    async def feasibility(self, call: Call) -> dict[str, Any]:
        body = call.json_object()
        jobspec.check_uri(body.get("workflow"))
        jobspec.check_parameters(body.get("parameters"))
        jobspec.check_inputs(body.get("inputs"))
        jobspec.check_resources(body.get("resources"))
        return {
            "feasible": False,
            "start": None,
            "estimated_staging_seconds": None,
            "reasons": [NO_ENGINE],
        }

    async def openapi(self, call: Call) -> dict[str, Any]:
        return self._openapi

    async def subscriptions(self, call: Call) -> dict[str, Any]:
        raise ApiError(
            501,
            "not_implemented",
            "callback subscriptions are not available in this version; poll "
            "GET /v1/jobs/{id}/events?after=SEQ&wait=SECONDS instead",
        )
