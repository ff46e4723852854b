"""
Assembling the API: the router with every endpoint, the site, and the
service that listens with mutual TLS.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.logger import Logger

from kree import jobspec
from kree.api import tls
from kree.api.feasibility import FeasibilityApi
from kree.api.info import InfoApi
from kree.api.jobs import JobsApi
from kree.api.resource import ApiResource, ApiSite, Router
from kree.api.subscriptions import SubscriptionsApi
from kree.api.workflows import WorkflowsApi
from kree.engines import EngineCatalog
from kree.events import EventWaiters


def build_site(config, store, jobs, supervisor, reactor, catalog: EngineCatalog) -> ApiSite:
    threadpool = reactor.getThreadPool()
    waiters = EventWaiters(reactor)
    jobs.add_observer(waiters.observe)
    router = Router()
    JobsApi(jobs, waiters, reactor, threadpool,
            allowed_hosts=config.fetch.allowed_hosts,
            walltime=jobspec.WalltimeLimits.from_config(config.supervisor)).register(router)
    WorkflowsApi(store, config.cache_dir, reactor, threadpool).register(router)
    InfoApi(config, jobs, catalog).register(router)
    SubscriptionsApi(config, store, reactor).register(router)
    FeasibilityApi(config, store, jobs, supervisor).register(router)
    return ApiSite(ApiResource(router, store), config.server.max_body_bytes, reactor,
                   idle_timeout=config.server.idle_timeout_seconds,
                   head_timeout=config.server.request_head_timeout_seconds)


class ApiService(Service):
    """Listens on [server] listen with TLS 1.2+ and required client certificates."""

    log = Logger()

    def __init__(self, config, store, jobs, supervisor, reactor, *,
                 catalog: EngineCatalog) -> None:
        self._catalog = catalog
        self._config = config
        self._store = store
        self._jobs = jobs
        self._supervisor = supervisor
        self._reactor = reactor
        self.port = None

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        options = tls.server_options(self._config)
        host, port = self._config.listen_host_port
        site = build_site(self._config, self._store, self._jobs, self._supervisor, self._reactor,
                          self._catalog)
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
