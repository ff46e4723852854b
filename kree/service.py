"""
The daemon's service tree.

L{KreeDaemon} is a MultiService whose children start one after another, in
dependency order, each awaited before the next; they stop in reverse order
(the API first, the store last), as Buildbot's AsyncMultiService does.
Each child gets the reactor injected; only kree.daemon passes the global one.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kree import __version__, credentials, pki
from kree.admin.server import AdminCommands, AdminSocketService
from kree.api.site import ApiService, V1Services
from kree.config import Config
from kree.engines import EngineCatalog
from kree.events import DeliveryService
from kree.feasibility import FeasibilityService
from kree.fetch import Fetcher
from kree.frontends import FrontendService
from kree.jobs import JobService, ParameterLocks
from kree.outputs import FinishedJobUploads, OutputUploader
from kree.sandbox import Sandbox
from kree.store import Store
from kree.subscriptions import SubscriptionService
from kree.supervisor import Supervisor
from kree.validation import WorkflowChecker
from kree.wes import build_wes


class AsyncMultiService(MultiService):
    """Start children in order, stop them in reverse, awaiting each."""

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start_children())

    async def _start_children(self) -> None:
        for child in list(self):
            await maybeDeferred(child.startService)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if child.running:
                await maybeDeferred(child.stopService)


class StoreService(Service):
    """Opens the store and makes sure its schema is the one this KREE needs."""

    log = Logger()

    def __init__(self, store: Store) -> None:
        self.store = store

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.store.start()
        status = await self.store.prepare_for_daemon()
        self.log.info("store {url}: {status}", url=self.store.url, status=status.describe())

    def stopService(self) -> None:
        Service.stopService(self)
        # Joins the DB thread; at this point only the tail of the last
        # transaction can still be running.
        self.store.stop()


class SandboxService(Service):
    """
    At start, before any engine: the kernel gives the [sandbox] mode, and an
    engine inside the sandbox can work (kree.sandbox.Sandbox.check); kreed
    refuses to start otherwise, saying why.
    """

    log = Logger()

    def __init__(self, sandbox: Sandbox, scratch: Path, reactor) -> None:
        self._sandbox = sandbox
        self._scratch = scratch
        self._reactor = reactor

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        await self._sandbox.check(self._reactor, self._scratch)
        described = self._sandbox.describe()
        self.log.info("sandbox: {mode}, engines as {user}", mode=described["mode"],
                      user=described["user"] or "kreed's own account")


class DevCredentialsService(Service):
    """
    C{kreed --dev}: create what is missing of a development CA, a server
    certificate for localhost, and a frontend named C{dev} with its
    certificate, and register that frontend.  Existing files are kept, so
    only the first start creates anything.
    """

    log = Logger()

    def __init__(self, config: Config, store: Store, reactor) -> None:
        self._config = config
        self._store = store
        self._reactor = reactor

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        issued = await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._create_files
        )
        for what in issued:
            self.log.info("--dev: created {what}", what=what)
        cert_path, _ = credentials.frontend_paths(self._config, credentials.DEV_FRONTEND)
        cert = pki.load_certificate(cert_path)
        fingerprint = pki.fingerprint(cert)
        registered = await self._store.frontends.by_fingerprint(fingerprint)
        if registered is None:
            await self._store.frontends.add(credentials.DEV_FRONTEND, fingerprint, pki.subject(cert))
            self.log.info("--dev: registered frontend {frontend}", frontend=credentials.DEV_FRONTEND)

    def _create_files(self) -> list[str]:
        config = self._config
        created = []
        if not config.tls_path("ca").exists():
            credentials.init_ca(config)
            created.append(f"development CA {config.tls_path('ca')}")
        if not config.tls_path("cert").exists():
            credentials.issue_server(config, credentials.DEV_SERVER_NAMES)
            created.append(f"server certificate {config.tls_path('cert')}")
        cert_path, _ = credentials.frontend_paths(config, credentials.DEV_FRONTEND)
        if not cert_path.exists():
            credentials.issue_frontend(config, credentials.DEV_FRONTEND)
            created.append(f"frontend certificate {cert_path}")
        return created


class KreeDaemon(AsyncMultiService):
    log = Logger()

    def __init__(self, config: Config, reactor, *, dev: bool = False,
                 stop_jobs_on_exit: bool = False) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.started_at = reactor.seconds()
        self.store = Store.from_url(
            config.store_url,
            reactor,
            sqlite_synchronous=config.store.sqlite_synchronous,
            pool_size=config.store.pool_size,
            reconnect_seconds=config.store.reconnect_seconds,
        )
        StoreService(self.store).setServiceParent(self)
        if dev:
            DevCredentialsService(config, self.store, reactor).setServiceParent(self)
        self.sandbox = Sandbox(config)
        SandboxService(self.sandbox, config.state_dir / "sandbox-check",
                       reactor).setServiceParent(self)
        self.fetcher = Fetcher(config, self.store, reactor,
                               freshness_seconds=config.fetch.freshness_seconds)
        self.uploader = OutputUploader(config, reactor)
        self.checker = WorkflowChecker(reactor, limits=config.validation)
        self.jobs = JobService(
            self.store, reactor, config.jobs_dir,
            job_roots={name: config.job_root(name) for name in config.backends},
            default_backend=config.supervisor.default_backend,
            workflows=self.fetcher, checker=self.checker, sandbox=self.sandbox,
            locks=ParameterLocks.from_config(config.parameters))
        self.jobs.add_observer(FinishedJobUploads(self.jobs, self.uploader, reactor).observe)
        self.supervisor = Supervisor(config, self.store, self.jobs, reactor,
                                     fetcher=self.fetcher, stop_jobs_on_exit=stop_jobs_on_exit,
                                     sandbox=self.sandbox)
        self.supervisor.setServiceParent(self)
        self.jobs.attach_engines(self.supervisor)
        self.deliveries = DeliveryService(config, self.store, self.jobs, reactor)
        self.deliveries.setServiceParent(self)
        self.frontends = FrontendService(self.store)
        services = V1Services(
            jobs=self.jobs,
            subscriptions=SubscriptionService(
                self.store, self.jobs, reactor, allowed_hosts=config.fetch.allowed_hosts,
                allow_private_addresses=config.fetch.allow_private_addresses),
            feasibility=FeasibilityService(
                self.store, self.jobs, backends=self.supervisor.backends,
                free_slots=self.supervisor.free_slots,
                default_backend=config.supervisor.default_backend,
                locks=ParameterLocks.from_config(config.parameters), sandbox=self.sandbox),
            catalog=EngineCatalog(self.store, reactor),
            frontends=self.frontends,
            sandbox=self.sandbox)
        self.api = ApiService(config, services, reactor,
                              dialects=(build_wes(config, self.jobs),))
        self.api.setServiceParent(self)
        commands = AdminCommands(store=self.store, jobs=self.jobs, frontends=self.frontends,
                                 engines=self.supervisor, state_dir=config.state_dir,
                                 sandbox=self.sandbox)
        AdminSocketService(commands, config.admin_socket, reactor).setServiceParent(self)

    def startService(self) -> Deferred:
        self.log.info(
            "kreed {version} starting: state directory {state_dir}",
            version=__version__,
            state_dir=str(self.config.state_dir),
        )
        return super().startService()

    async def _stop_children(self) -> None:
        await super()._stop_children()
        await self.fetcher.close()
        await self.uploader.close()
