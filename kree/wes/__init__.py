"""
The GA4GH Workflow Execution Service 1.1 dialect, at /ga4gh/wes/v1 on the
listener /v1 uses (issue 18).  Like /v1 it is built from the job service
alone (the import contracts keep it off the store, the supervisor and /v1):
a WES run is a KREE job, run_id its id.

  - L{dialect}: the prefix, errors as C{{msg, status_code}}, text pages;
  - L{runs}: POST/GET /runs and a run's log, status, cancel, tasks, stdout, stderr;
  - L{info}: service-info and the authentication instructions;
  - L{states}: KREE states as WES states;
  - L{workflows}: the workflow types offered (from kree.engines.ENGINE_KINDS);
  - L{multipart}: the strict multipart/form-data reader POST /runs needs.
"""

from __future__ import annotations

from kree.config import Config
from kree.jobs import JobService
from kree.web.routing import Router
from kree.wes.dialect import PREFIX, WesDialect
from kree.wes.info import InfoApi
from kree.wes.runs import RunsApi

__all__ = ["PREFIX", "build_wes"]


def build_wes(config: Config, jobs: JobService) -> WesDialect:
    router = Router()
    info = InfoApi(config, jobs)
    info.register(router)
    RunsApi(jobs, schemes=info.protocols()).register(router)
    return WesDialect(router)
