"""
GET /service-info (a GA4GH ServiceInfo with WES 1.1's fields) and the page
its C{auth_instructions_url} names.
"""

from __future__ import annotations

from typing import Any

from kree import __version__
from kree.config import Config
from kree.jobs import JobService
from kree.states import JobState
from kree.web.routing import Call, Router
from kree.wes.dialect import PREFIX, TextBody
from kree.wes.runs import ENGINE
from kree.wes.states import STATES, wes_state_of
from kree.wes.workflows import workflow_types

WES_VERSION = "1.1.0"
#: FAILED jobs read per page to tell EXECUTOR_ERROR from SYSTEM_ERROR.
FAILED_PAGE = 500

AUTH_INSTRUCTIONS = """\
Authenticating to KREE's GA4GH WES endpoint ({prefix})
=====================================================

This service accepts no passwords and no bearer tokens.  Every connection is
mutual TLS: your client must present an X.509 client certificate issued by
this KREE's certificate authority, and the certificate's SHA-256 fingerprint
must be registered as a frontend that is not revoked.  The frontend the
certificate names sees only its own runs; another frontend's run is a 404.

To get one, ask the KREE administrator, who runs

    kree-admin frontend add NAME

and gives you NAME.pem, NAME.key and the CA certificate (ca.pem).  Then, for
example with curl:

    curl --cert NAME.pem --key NAME.key --cacert ca.pem \\
        https://HOST:PORT{prefix}/service-info

With Python's requests: session.cert = ("NAME.pem", "NAME.key") and
session.verify = "ca.pem" (or REQUESTS_CA_BUNDLE=ca.pem).

Optionally, the header X-KREE-User names the person on whose behalf the
frontend acts; runs are then listed and created for that user.

You are reading this page, so your certificate works.
"""


class InfoApi:
    def __init__(self, config: Config, jobs: JobService) -> None:
        self._config = config
        self._jobs = jobs

    def register(self, router: Router) -> None:
        router.add("GET", f"{PREFIX}/service-info", self.service_info)
        router.add("GET", f"{PREFIX}/auth-instructions", self.auth_instructions)

    def protocols(self) -> tuple[str, ...]:
        """What an absolute workflow_url may be: http(s) if any host is allowed, file if roots are."""
        fetch = self._config.fetch
        return (*(("http", "https") if fetch.allowed_hosts else ()),
                *(("file",) if fetch.file_roots else ()))

    async def service_info(self, call: Call) -> dict[str, Any]:
        root = f"https://{call.request.getHeader('host')}" if call.request.getHeader("host") else ""
        return {
            "id": "org.kree.wes",
            "name": "KREE WES",
            "type": {"group": "org.ga4gh", "artifact": "wes", "version": WES_VERSION},
            "description": "The Kepler Remote Execution Engine's GA4GH Workflow Execution "
                           "Service: every run is a KREE job, also visible under /v1.",
            "organization": {"name": "KREE", "url": f"{root}/" if root else "https://localhost/"},
            "version": __version__,
            "workflow_type_versions": {
                t.name: {"workflow_type_version": list(t.versions)}
                for t in workflow_types().values()},
            "supported_wes_versions": [WES_VERSION],
            "supported_filesystem_protocols": list(self.protocols()),
            "workflow_engine_versions": {ENGINE: {"workflow_engine_version": [__version__]}},
            "default_workflow_engine_parameters": [],
            "system_state_counts": await self._state_counts(call.frontend.id),
            "auth_instructions_url": f"{root}{PREFIX}/auth-instructions",
            "tags": {"frontend": call.frontend.name, "run_id": "the KREE job id",
                     "task_logs": "not recorded yet: every run lists no tasks"},
        }

    async def _state_counts(self, frontend_id: int) -> dict[str, int]:
        """This frontend's runs by WES state (every state listed, most with 0)."""
        counts = dict.fromkeys(STATES, 0)
        by_state = await self._jobs.count_by_state(frontend_id)
        for state, count in by_state.items():
            if state is not JobState.FAILED:
                counts[wes_state_of(state)] += count
        if by_state.get(JobState.FAILED):
            # Which failures were KREE's is in each job's error text.
            after = None
            while True:
                failed, after = await self._jobs.list(frontend_id, state=JobState.FAILED,
                                                      after=after, limit=FAILED_PAGE)
                for job in failed:
                    counts[wes_state_of(job.state, job.error)] += 1
                if after is None:
                    break
        return counts

    async def auth_instructions(self, call: Call) -> TextBody:
        return TextBody(AUTH_INSTRUCTIONS.format(prefix=PREFIX))
