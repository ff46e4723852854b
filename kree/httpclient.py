"""
The plumbing KREE's outgoing HTTP shares: callback deliveries (kree.events),
fetching workflows and inputs (kree.fetch) and uploading results
(kree.outputs) all use Twisted's HTTP client the same way.

- L{ServerTLSPolicy}: https servers are verified with service_identity
  against a configured CA or the system's trust store; KREE can present a
  client certificate of its own.
- L{new_agent}: an Agent over a persistent connection pool; Agents never
  follow redirects by themselves, so callers that do check every hop.
- L{DiscardBody}: reads and drops a response body, up to a limit, so the
  connection can be reused; cancelling it drops the connection.
- L{timed_out}: for C{Deferred.addTimeout(..., onTimeoutCancel=timed_out)}: a
  cancelled request fails with ResponseNeverReceived, which this turns into a
  TimeoutError that says so.
- L{describe_failure}: a readable reason for connection-level failures.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS, platformTrust
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


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


def new_agent(reactor, *, connect_timeout: float | None, policy=None,
              per_host: int = 4) -> tuple[Agent, HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    agent = Agent(reactor, contextFactory=policy or ServerTLSPolicy(), pool=pool,
                  connectTimeout=connect_timeout or None)
    return agent, pool


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
