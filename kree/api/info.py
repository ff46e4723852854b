"""
Service-level endpoints of /v1: service-info, capabilities and the OpenAPI
document.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from twisted.logger import Logger

from kree import __version__, jobspec
from kree.api.jobs import MAX_PAGE, MAX_WAIT_SECONDS
from kree.web.routing import Call, Router
from kree.config import Config
from kree.engines import EngineCatalog
from kree.jobs import JobService
from kree.sandbox import Sandbox
from kree.records import isoformat
from kree.states import JobState

ENGINE = "kree"


def openapi_document() -> dict[str, Any]:
    return json.loads(resources.files("kree.api").joinpath("openapi.json").read_text("utf-8"))


class InfoApi:
    log = Logger()

    def __init__(self, config: Config, jobs: JobService, catalog: EngineCatalog,
                 sandbox: Sandbox | None = None) -> None:
        self._config = config
        self._sandbox = sandbox
        self._jobs = jobs
        self._catalog = catalog
        self._openapi = openapi_document()

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/service-info", self.service_info)
        router.add("GET", "/v1/capabilities", self.capabilities)
        router.add("GET", "/v1/openapi.json", self.openapi)

    async def service_info(self, call: Call) -> dict[str, Any]:
        return {
            "name": "KREE",
            "version": __version__,
            "api_version": "v1",
            "frontend": call.frontend.name,
            "time": isoformat(self._jobs.now()),
            "states": [s.value for s in JobState],
            "engines": [ENGINE],
            "backends": list(self._config.backends),
            "sandbox": self._sandbox.describe() if self._sandbox else {"mode": "none"},
            "limits": {
                "max_body_bytes": self._config.server.max_body_bytes,
                "max_page": MAX_PAGE,
                "max_wait_seconds": MAX_WAIT_SECONDS,
                "max_parameters": jobspec.MAX_PARAMETERS,
                "max_inputs": jobspec.MAX_INPUTS,
                "max_cpus": jobspec.MAX_CPUS,
                "max_memory_bytes": jobspec.MAX_MEMORY_BYTES,
                "default_walltime_seconds": self._config.supervisor.default_walltime_seconds,
                "max_walltime_seconds": self._config.supervisor.max_walltime_seconds,
            },
        }

    async def capabilities(self, call: Call) -> dict[str, Any]:
        offered = await self._catalog.capabilities()
        return {"engines": [ENGINE], **offered, "backends": list(self._config.backends)}

    async def openapi(self, call: Call) -> dict[str, Any]:
        return self._openapi
