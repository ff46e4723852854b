"""
The HTTP site under every dialect: twisted.web's request, channel and site
with the limits a daemon facing the network needs (body size, header size
and count, idle and request-head timeouts).  Refusals made before a request
exists (408, 431) are bare JSON errors, whatever the dialect.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.web import http, server

_log = Logger(namespace="kree.web")


class LimitedRequest(server.Request):
    """
    A request that keeps at most the site's C{max_body_bytes} of a body.
    Anything larger is discarded as it arrives and answered with 413, so a
    huge upload costs bandwidth but never memory or disk.
    """

    body_too_large = False

    def gotLength(self, length):
        limit = self.channel.site.max_body_bytes
        if length is not None and length > limit:
            self.body_too_large = True
            length = 0
        self._body_received = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._body_received += len(data)
        if self._body_received > self.channel.site.max_body_bytes:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


def _bare_error(status: int, reason: bytes, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response, for refusals before a request exists."""
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(body), body))


class WebChannel(http.HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel with the limits a daemon facing the
    network needs:

      - the request head (request line and headers) must arrive within the
        site's C{head_timeout} seconds of its first byte, else 408 and the
        connection closes (the idle timeout alone restarts on every byte, so
        a client trickling a header would hold a connection for ever);
      - a header line over C{MAX_LENGTH} or a head over C{totalHeadersSize}
        (16 KiB) or more than C{maxHeaders} headers: 431, then close;
      - C{Expect: 100-continue} with a Content-Length over the body limit
        gets no C{100 Continue}: the request is answered 413 at once (and
        audited like any other) and the connection closes after it.

    A connection whose peer does not let it close is aborted after
    C{abortTimeout} seconds.
    """

    abortTimeout = 10
    _head_deadline = None

    def connectionMade(self):
        super().connectionMade()
        self._awaiting_head = True

    def dataReceived(self, data):
        if self._awaiting_head and self._head_deadline is None and data:
            self._head_deadline = self.callLater(self.factory.head_timeout, self._head_too_slow)
        super().dataReceived(data)

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            if self._head_deadline.active():
                self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self._refuse(408, b"Request Timeout", "request_timeout",
                     f"the request head did not arrive within {self.factory.head_timeout:g} s")

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        self._log.info("refused {status} from {peer}: {message}", status=status,
                       peer=str(self.transport.getPeer()), message=message)
        self._awaiting_head = False
        self._stop_head_deadline()
        self.dataReceived = self.lineReceived = lambda *args: None
        self.persistent = False
        self.transport.write(_bare_error(status, reason, code, message))
        self.loseConnection()
        if self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def lineLengthExceeded(self, line):
        self._refuse(431, b"Request Header Fields Too Large", "headers_too_large",
                     f"a line of the request head is longer than {self.MAX_LENGTH} bytes")

    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(431, b"Request Header Fields Too Large", "headers_too_large",
                         f"the request head is larger than {self.totalHeadersSize} bytes")
            return
        super().lineReceived(line)

    def headerReceived(self, line):
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, b"Request Header Fields Too Large", "headers_too_large",
                         f"the request has more than {self.maxHeaders} headers")
            return False
        return super().headerReceived(line)

    def allHeadersReceived(self):
        self._awaiting_head = False
        self._stop_head_deadline()
        super().allHeadersReceived()
        request = self.requests[-1]
        if request.body_too_large and self._expects_continue(request):
            # Answer now instead of inviting a body that would be thrown away.
            self.persistent = False
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            self.length = 0

    def _expects_continue(self, request) -> bool:
        expect = request.requestHeaders.getRawHeaders(b"expect")
        return bool(expect) and expect[0].lower() == b"100-continue"

    def _send100Continue(self):
        if not self.requests[-1].body_too_large:
            super()._send100Continue()

    def requestDone(self, request):
        super().requestDone(request)
        self._awaiting_head = True

    def connectionLost(self, reason):
        self._stop_head_deadline()
        super().connectionLost(reason)


class WebSite(server.Site):
    """
    The site of every dialect on the listener: bodies up to C{max_body_bytes}, idle connections closed
    after C{idle_timeout} seconds without a byte, request heads due within
    C{head_timeout} seconds (L{WebChannel}).
    """

    requestFactory = LimitedRequest
    protocol = WebChannel

    def __init__(self, root, max_body_bytes: int, reactor=None, *,
                 idle_timeout: float = 60.0, head_timeout: float = 20.0) -> None:
        # Each dialect reads its own bodies (WES's multipart forms need the
        # file names twisted.web drops, and a malformed one must be answered
        # in the dialect's shape, not with twisted.web's bare 400).
        super().__init__(root, reactor=reactor, timeout=idle_timeout,
                         parsePOSTFormSubmission=False)
        self.max_body_bytes = max_body_bytes
        self.head_timeout = head_timeout
        self.displayTracebacks = False

    def log(self, request):
        # Access lines go to twisted.logger at debug level, as fields.
        _log.debug(
            "{method} {path} {status} {frontend_fingerprint}",
            method=request.method.decode(errors="replace"),
            path=request.uri.decode(errors="replace"),
            status=request.code,
            frontend_fingerprint=getattr(request.channel.transport, "_kree_peer_fingerprint", None),
        )
