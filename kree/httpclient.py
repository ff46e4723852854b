"""
The plumbing KREE's outgoing HTTP shares: callback deliveries (kree.events),
fetching workflows and inputs (kree.fetch) and uploading results
(kree.outputs) all use Twisted's HTTP client the same way.

- L{ServerTLSPolicy}: https servers are verified with service_identity
  against a configured CA or the system's trust store; KREE can present a
  client certificate of its own.
- L{PinnedAgent}: requests to a L{kree.urlguard.CheckedURL}, over a
  persistent connection pool, connecting only to the addresses the URL was
  checked with (never resolving the name again: no DNS rebinding past the
  guard); https keeps the name for SNI and the certificate check, and the
  Host header is the name.  It never follows redirects, so callers that do
  check every hop.
- L{DiscardBody}: reads and drops a response body, up to a limit, so the
  connection can be reused; cancelling it drops the connection.
- L{timed_out}: for C{Deferred.addTimeout(..., onTimeoutCancel=timed_out)}: a
  cancelled request fails with ResponseNeverReceived, which this turns into a
  TimeoutError that says so.
- L{describe_failure}: a readable reason for connection-level failures.
"""

from __future__ import annotations

import ipaddress

from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS, platformTrust
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from kree.urlguard import CheckedURL


@implementer(IPolicyForHTTPS)
class ServerTLSPolicy:
    """Verify servers by name against our CA or the system's; maybe present our certificate."""

    def __init__(self, ca_path: str = "", cert_path: str = "", key_path: str = "") -> None:
        self._trust = Certificate.loadPEM(open(ca_path, "rb").read()) if ca_path else platformTrust()
        self._client = None
        if cert_path:
            self._client = PrivateCertificate.loadPEM(
                open(cert_path, "rb").read() + b"\n" + open(key_path, "rb").read())

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode("idna"), trustRoot=self._trust,
                                   clientCertificate=self._client)


@implementer(IStreamClientEndpoint)
class CheckedAddresses:
    """
    Connects to the first of the given addresses that accepts, in order, each
    with the connect timeout; fails with every address's reason.
    """

    def __init__(self, reactor, addresses: tuple[str, ...], port: int,
                 timeout: float | None) -> None:
        self._reactor = reactor
        self._addresses = addresses
        self._port = port
        self._timeout = timeout

    def connect(self, factory) -> Deferred:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory):
        reasons = []
        for address in self._addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            kind = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
            endpoint = kind(self._reactor, address, self._port,
                            **({"timeout": self._timeout} if self._timeout else {}))
            try:
                return await endpoint.connect(factory)
            except CancelledError:
                raise
            except Exception as e:
                reasons.append(f"{address}: {describe_failure(e)}")
        raise ConnectError(string="; ".join(reasons))


@implementer(IAgentEndpointFactory)
class _PinnedEndpoints:
    """Endpoints for one checked URL: its addresses, wrapped in TLS (by name) for https."""

    def __init__(self, reactor, checked: CheckedURL, policy: IPolicyForHTTPS,
                 timeout: float | None) -> None:
        self._reactor = reactor
        self._checked = checked
        self._policy = policy
        self._timeout = timeout

    def endpointForURI(self, uri):
        checked = self._checked
        endpoint = CheckedAddresses(self._reactor, checked.addresses, checked.port,
                                    self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class PinnedAgent:
    """
    Twisted's Agent, for L{CheckedURL}s only: connections go to the checked
    addresses, and idle ones are kept in one persistent pool.  A pooled
    connection was made to an address checked for the same scheme, name and
    port, so reusing it is as safe as the check that made it.
    """

    def __init__(self, reactor, *, connect_timeout: float | None, policy=None,
                 per_host: int = 4) -> None:
        self._reactor = reactor
        self._policy = policy or ServerTLSPolicy()
        self._timeout = connect_timeout or None
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = per_host

    def request(self, method: bytes, checked: CheckedURL, headers=None,
                body=None) -> Deferred:
        """Like C{IAgent.request}, to C{checked.url} (which must be ASCII)."""
        endpoints = _PinnedEndpoints(self._reactor, checked, self._policy, self._timeout)
        agent = Agent.usingEndpointFactory(self._reactor, endpoints, pool=self.pool)
        return agent.request(method, checked.url.encode("ascii"), headers, body)

    def close(self) -> Deferred:
        """Drop idle persistent connections (at shutdown)."""
        return self.pool.closeCachedConnections()


class DiscardBody(protocol.Protocol):
    """Reads and drops a response body (up to a limit), so the connection can be reused."""

    LIMIT = 65536

    def __init__(self) -> None:
        self.done = Deferred(self._cancel)
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.LIMIT:
            self.transport.stopProducing()

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _cancel(self, d: Deferred) -> None:
        d.errback(Failure(CancelledError()))
        if self.transport is not None:
            self.transport.stopProducing()


def timed_out(result, timeout: float):
    if isinstance(result, Failure):
        raise TimeoutError(timeout, f"no answer within {timeout} s")
    return result


def describe_failure(error: BaseException) -> str:
    """A readable reason for a connection-level failure."""
    reasons = getattr(error, "reasons", None)  # ResponseFailed, ResponseNeverReceived ...
    if isinstance(reasons, list) and reasons:
        return "; ".join(describe_failure(getattr(f, "value", f)) for f in reasons)
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
