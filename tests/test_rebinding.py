"""
DNS rebinding: KREE connects to the addresses its URL guard checked and
never resolves the name again, for fetching (workflows and staged inputs),
uploads and callbacks; https keeps the name for SNI and the certificate,
and the Host header is the name.

A name is made to "rebind": the guard's resolver (getaddrinfo) answers
127.0.0.1, where the right server listens, and the reactor's resolver (the
one Twisted's own endpoints use) answers 127.0.0.2, where another server
listens on the same port.  Without pinning, the request would reach the
second server.
"""

import json
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.ssl import PrivateCertificate
from twisted.web import resource, server
from twisted.web.client import readBody
from zope.interface import implementer

from kree import pki, urlguard
from kree.config import load_config
from kree.events import DeliveryService
from kree.fetch import Fetcher
from kree.httpclient import PinnedAgent, ServerTLSPolicy
from kree.ids import new_subscription_id
from kree.jobs import JobService
from kree.outputs import OutputUploader
from kree.states import Action
from waiting import until

NAME = "rebind.kree.test"
CHECKED, ELSEWHERE = "127.0.0.1", "127.0.0.2"


class Recorder(resource.Resource):
    """Answers every request with its own name and remembers what it saw."""

    isLeaf = True

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.seen: list[tuple[str, str, str, bytes]] = []

    def render(self, request):
        body = request.content.read()
        self.seen.append((request.method.decode(), request.path.decode(),
                          request.getHeader("host"), body))
        request.setResponseCode(201 if request.method == b"PUT" else 200)
        return self.label.encode()


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name):
        self.name = name


@implementer(IHostnameResolver)
class ElsewhereResolver:
    """The reactor's resolver during a test: every name is ELSEWHERE, and asked names are kept."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        receiver.addressResolved(IPv4Address("TCP", ELSEWHERE, portNumber))
        receiver.resolutionComplete()
        return resolution


@pytest.fixture
def rebinding(monkeypatch):
    """NAME resolves to CHECKED for the guard and to ELSEWHERE for anything else."""
    real = socket.getaddrinfo

    def guard_view(host, port, *args, **kwargs):
        if host == NAME:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (CHECKED, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guard_view)
    resolver = ElsewhereResolver()
    previous = reactor.installNameResolver(resolver)
    yield resolver
    reactor.installNameResolver(previous)


def listen_twice(make_site, tls_options=None):
    """The same port on CHECKED and ELSEWHERE (retrying if another test holds it on CHECKED)."""
    for _ in range(50):
        elsewhere_site, checked_site = make_site("elsewhere"), make_site("checked")
        listen = ((lambda port, site, host: reactor.listenSSL(port, site, tls_options,
                                                               interface=host))
                  if tls_options else
                  (lambda port, site, host: reactor.listenTCP(port, site, interface=host)))
        other = listen(0, elsewhere_site, ELSEWHERE)
        number = other.getHost().port
        try:
            mine = listen(number, checked_site, CHECKED)
        except CannotListenError:
            other.stopListening()
            continue
        return number, checked_site.resource, elsewhere_site.resource, (mine, other)
    raise AssertionError("no port free on both loopback addresses")


@pytest.fixture
def servers():
    """http servers on CHECKED and ELSEWHERE at one port: (port, checked, elsewhere)."""
    number, checked, elsewhere, ports = listen_twice(lambda label: server.Site(Recorder(label)))
    yield number, checked, elsewhere
    for port in ports:
        port.stopListening()


@pytest.fixture
def tls_servers(tmp_path):
    """The same over https, with a certificate for NAME only; also the CA's path."""
    ca = pki.create_ca("Rebinding CA")
    issued = pki.issue(ca, "origin", server_names=[NAME])
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(pki.cert_pem(ca.certificate))
    options = PrivateCertificate.loadPEM(
        pki.cert_pem(issued.certificate) + pki.key_pem(issued.key)).options()
    number, checked, elsewhere, ports = listen_twice(
        lambda label: server.Site(Recorder(label)), tls_options=options)
    yield number, checked, elsewhere, str(ca_path)
    for port in ports:
        port.stopListening()


@pytest.fixture
def config(tmp_path):
    lines = [f"state_dir = {json.dumps(str(tmp_path / 'state'))}",
             "[fetch]", f'allowed_hosts = ["{NAME}"]', "allow_private_addresses = true",
             "timeout_seconds = 10"]
    path = tmp_path / "kree.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


@pytest_twisted.async_yield_fixture
async def agents():
    made = []

    def make(**kwargs):
        agent = PinnedAgent(reactor, connect_timeout=10, **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.close()


@pytest_twisted.ensureDeferred
async def test_the_agent_connects_to_the_checked_address_by_name(rebinding, servers, agents):
    number, checked, elsewhere = servers
    url = f"http://{NAME}:{number}/doc"
    target = await urlguard.check_reachable(reactor, url, [NAME], True)
    assert target.addresses == (CHECKED,) and target.port == number
    response = await agents().request(b"GET", target)
    assert (response.code, await readBody(response)) == (200, b"checked")
    assert checked.seen == [("GET", "/doc", f"{NAME}:{number}", b"")]
    assert elsewhere.seen == [] and rebinding.asked == []


@pytest_twisted.ensureDeferred
async def test_https_verifies_the_name_on_the_checked_address(rebinding, tls_servers, agents):
    number, checked, elsewhere, ca = tls_servers
    target = await urlguard.check_reachable(reactor, f"https://{NAME}:{number}/x", [NAME], True)
    response = await agents(policy=ServerTLSPolicy(ca)).request(b"GET", target)
    assert (response.code, await readBody(response)) == (200, b"checked")
    assert [host for _, _, host, _ in checked.seen] == [f"{NAME}:{number}"]
    assert elsewhere.seen == [] and rebinding.asked == []


@pytest_twisted.ensureDeferred
async def test_every_checked_address_is_tried_in_order(rebinding, servers, agents):
    number, checked, elsewhere = servers
    url = f"http://{NAME}:{number}/doc"
    closed = socket.socket()
    closed.bind(("127.0.0.3", 0))  # a port with nothing listening on 127.0.0.3
    dead = closed.getsockname()[1]
    closed.close()
    target = urlguard.CheckedURL(url=url, parts=urlguard.check_url(url, [NAME]),
                                 addresses=("127.0.0.3", CHECKED))
    assert target.port == number
    response = await agents().request(b"GET", target)
    assert await readBody(response) == b"checked"
    refused = urlguard.CheckedURL(url=f"http://{NAME}:{dead}/", parts=urlguard.check_url(
        f"http://{NAME}:{dead}/", [NAME]), addresses=("127.0.0.3",))
    with pytest.raises(ConnectError, match=r"127\.0\.0\.3: .*refused"):
        await agents().request(b"GET", refused)
    assert rebinding.asked == []


@pytest_twisted.async_yield_fixture
async def fetcher(store, config):
    made = Fetcher(config, store, reactor)
    yield made
    await made.close()


@pytest_twisted.ensureDeferred
async def test_fetching_connects_to_the_checked_address(rebinding, servers, fetcher):
    number, checked, elsewhere = servers
    result = await fetcher.fetch(f"http://{NAME}:{number}/workflow.xml")
    assert result.fetched and result.path.read_bytes() == b"checked"
    assert [(m, p, h) for m, p, h, _ in checked.seen] == [
        ("GET", "/workflow.xml", f"{NAME}:{number}")]
    assert elsewhere.seen == [] and rebinding.asked == []


@pytest_twisted.ensureDeferred
async def test_uploads_connect_to_the_checked_address(rebinding, servers, config, tmp_path):
    number, checked, elsewhere = servers
    job_dir = tmp_path / "job"
    (job_dir / "products").mkdir(parents=True)
    (job_dir / "products" / "result.txt").write_bytes(b"42\n")
    uploader = OutputUploader(config, reactor)
    reports = []

    async def report(level, text):
        reports.append((level, text))

    try:
        outcomes = await uploader.upload(job_dir, f"http://{NAME}:{number}/out/", report)
    finally:
        await uploader.close()
    assert [outcome.ok for outcome in outcomes] == [True], (outcomes, reports)
    assert checked.seen == [("PUT", "/out/result.txt", f"{NAME}:{number}", b"42\n")]
    assert elsewhere.seen == [] and rebinding.asked == []


@pytest_twisted.ensureDeferred
async def test_callbacks_connect_to_the_checked_address(rebinding, servers, config, store,
                                                         frontend, tmp_path):
    number, checked, elsewhere = servers
    jobs = JobService(store, reactor, tmp_path / "jobs")
    await store.subscriptions.add(subscription_id=new_subscription_id(),
                                  frontend_id=frontend.id, url=f"http://{NAME}:{number}/hook",
                                  secret="s" * 32, event_types=["job.state"])
    delivery = DeliveryService(config, store, jobs, reactor)
    delivery.startService()
    try:
        job = await jobs.create(frontend.id, "kree:workflow/abc")
        await jobs.apply(job.id, Action.QUEUE, frontend_id=frontend.id)
        await until(lambda: checked.seen, "the callback at the checked address")
    finally:
        await delivery.stopService()
    method, path, host, body = checked.seen[0]
    assert (method, path, host) == ("POST", "/hook", f"{NAME}:{number}")
    assert json.loads(body)["data"]["to"] == "QUEUED"
    assert elsewhere.seen == [] and rebinding.asked == []
