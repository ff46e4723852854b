"""
Service-level endpoints: service-info, capabilities, feasibility, the
OpenAPI document, and the subscription endpoints until callbacks land.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from kree import __version__, jobspec
from kree.api.jobs import MAX_PAGE, MAX_WAIT_SECONDS
from kree.api.resource import ApiError, Call, Router
from kree.engines import MOML
from kree.records import isoformat
from kree.states import JobState

ENGINE = "kree"


def openapi_document() -> dict[str, Any]:
    return json.loads(resources.files("kree.api").joinpath("openapi.json").read_text("utf-8"))


class InfoApi:
    log = Logger()

    def __init__(self, config, jobs, store, reactor) -> None:
        self._config = config
        self._jobs = jobs
        self._store = store
        self._reactor = reactor
        self._openapi = openapi_document()
        self._engine_info: dict[str, Any] | None = None

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

    async def _engine(self, command: str) -> Any:
        """Ask the engine program (it loads actor packages; the daemon does not)."""
        executable, *args = MOML.command(command)
        out, err, code = await getProcessOutputAndValue(executable, args, reactor=self._reactor)
        if code != 0:
            self.log.error("kree.engine {command} failed ({code}): {err}", command=command,
                           code=code, err=err.decode(errors="replace"))
            raise ApiError(503, "engine_unavailable", f"the workflow engine failed ({code})")
        return json.loads(out)

    async def capabilities(self, call: Call) -> dict[str, Any]:
        if self._engine_info is None:
            self._engine_info = {"actors": (await self._engine("actors"))["actors"]}
        # The registry is read each time: `kree-admin software rescan` updates it.
        software = await self._store.policies.software()
        if not software:
            software = await self._engine("software")
            await self._store.policies.record_software(software)
        policy = await self._store.policies.all()
        actors = [
            {**actor, "policy": policy.get(actor["class"], actor["policy"])}
            for actor in self._engine_info["actors"]
        ]
        return {
            "engines": [ENGINE],
            "actors": actors,
            "policy": policy,
            "software": software,
            "backends": list(self._config.backends),
        }

    async def openapi(self, call: Call) -> dict[str, Any]:
        return self._openapi
