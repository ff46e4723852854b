"""
Assembling /v1: the router with every endpoint, as a L{JsonDialect}, and
the service that listens with mutual TLS (other dialects join the same
listener through L{ApiService}'s C{dialects}).  The dialect is built from
the use-case services only (L{V1Services}): it never sees the store or the
supervisor.
"""

from __future__ import annotations

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.logger import Logger

from kree import jobspec
from kree.api.feasibility import FeasibilityApi
from kree.api.info import InfoApi
from kree.api.jobs import JobsApi
from kree.api.subscriptions import SubscriptionsApi
from kree.api.workflows import WorkflowsApi
from kree.config import Config
from kree.engines import EngineCatalog
from kree.events import EventWaiters
from kree.feasibility import FeasibilityService
from kree.jobs import JobService
from kree.sandbox import Sandbox
from kree.subscriptions import SubscriptionService
from kree.web import tls
from kree.web.resource import Dialect, Frontends, JsonDialect, WebResource
from kree.web.routing import Router
from kree.web.site import WebSite

PREFIX = "/v1"


@attrs.frozen
class V1Services:
    """The use cases /v1 calls."""

    jobs: JobService
    subscriptions: SubscriptionService
    feasibility: FeasibilityService
    catalog: EngineCatalog
    frontends: Frontends
    #: What service-info says of how engines are contained.
    sandbox: Sandbox | None = None


def build_v1(config: Config, services: V1Services, reactor) -> JsonDialect:
    waiters = EventWaiters(reactor)
    services.jobs.add_observer(waiters.observe)
    walltime = jobspec.WalltimeLimits.from_config(config.supervisor)
    router = Router()
    JobsApi(services.jobs, waiters,
            allowed_hosts=config.fetch.allowed_hosts, walltime=walltime).register(router)
    WorkflowsApi(services.jobs).register(router)
    InfoApi(config, services.jobs, services.catalog, services.sandbox).register(router)
    SubscriptionsApi(services.subscriptions).register(router)
    FeasibilityApi(services.feasibility, walltime=walltime, backends=config.backends,
                   installed=config.installed_backends).register(router)
    return JsonDialect(PREFIX, router)


def build_site(config: Config, services: V1Services, reactor, *,
               dialects: tuple[Dialect, ...] = ()) -> WebSite:
    """/v1 first (it answers paths no dialect claims), then C{dialects}."""
    resource = WebResource([build_v1(config, services, reactor), *dialects],
                           services.frontends)
    return WebSite(resource, config.server.max_body_bytes, reactor,
                   idle_timeout=config.server.idle_timeout_seconds,
                   head_timeout=config.server.request_head_timeout_seconds)


class ApiService(Service):
    """Listens on [server] listen with TLS 1.2+ and required client certificates."""

    log = Logger()

    def __init__(self, config: Config, services: V1Services, reactor, *,
                 dialects: tuple[Dialect, ...] = ()) -> None:
        self._config = config
        self._services = services
        self._dialects = dialects
        self._reactor = reactor
        self.port = None

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        options = tls.server_options(self._config)
        host, port = self._config.listen_host_port
        site = build_site(self._config, self._services, self._reactor, dialects=self._dialects)
        endpoint = SSL4ServerEndpoint(self._reactor, port, options, interface=host)
        self.port = await endpoint.listen(site)
        self.log.info(
            "frontend API listening on https://{host}:{port}",
            host=f"[{host}]" if ":" in host else host,
            port=self.port.getHost().port,
        )

    def stopService(self):
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

    @property
    def url(self) -> str:
        host, _ = self._config.listen_host_port
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port.getHost().port}"
