"""
The machinery under every API endpoint: routing, authentication of the
frontend, JSON in and out, the error mapping, and the audit trail.

Endpoints are C{async def} handlers registered on a L{Router} with a method
and a path pattern.  L{ApiResource} (one leaf resource for the whole API)
answers each request with C{Deferred.fromCoroutine}, so twisted.web never
blocks, and turns every failure into the JSON error body of DESIGN.md
section 3; nothing a caller sends can produce a traceback.

Authentication happens per request: the TLS layer has already verified the
client certificate against the CA; here its fingerprint must be a registered
frontend that is not revoked (403 otherwise).  Because the lookup is per
request, revoking a frontend takes effect on its next request.
"""

from __future__ import annotations

import json
import math
import re
import traceback
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web import http, resource, server

from kree.api.tls import peer_fingerprint
from kree.errors import DatabaseUnavailable, InvalidRequest, KreeError
from kree.records import Frontend

JSON_TYPE = "application/json"
USER_HEADER = b"x-kree-user"
MAX_USER_LENGTH = 255
# What a 503 for an unavailable database suggests to wait before trying again.
RETRY_AFTER_SECONDS = 5
# The status audited for a request whose client left before its answer (nginx's 499).
CLIENT_GONE = 499


class ApiError(KreeError):
    """An error with a status and code chosen at the raise site."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self.code = code


def unprocessable(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(422, code, message, **details)


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


class _NotJSON(ValueError):
    """A number the JSON grammar does not have (NaN, Infinity, one that overflows)."""


def _refuse_constant(name: str):
    raise _NotJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotJSON(f"{text} is too large for a number")
    return value


def parse_json_text(raw: bytes) -> Any:
    """
    Strict JSON (RFC 8259) from bytes: UTF-8 only, no C{NaN} or C{Infinity}
    (Python's json module accepts both), no number that overflows a double,
    and no string, key or value, holding a lone UTF-16 surrogate
    (C{"\\ud800"}), which no UTF-8 response or database could carry.
    Raises L{ApiError} 400 naming the place.
    """
    try:
        # JSON is UTF-8 (RFC 8259); json.loads(bytes) would also guess UTF-16/32.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotJSON as e:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    where = _surrogate_path(value, "")
    if where is not None:
        raise InvalidRequest(
            f"{where or 'the body'} holds a lone UTF-16 surrogate, which is not a character",
            field=where)
    return value


def printable_text(text: str) -> str:
    """C{text} with lone surrogates shown as C{\\udXXX}, so it can always be encoded."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_path(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) with a lone surrogate, if any."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                return where
        elif isinstance(node, dict):
            for key, item in node.items():
                inner = f"{where}.{printable_text(key)}" if where else printable_text(key)
                if _has_surrogate(key):
                    return inner
                stack.append((item, inner))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node))
    return None


@attrs.define
class Call:
    """One API request, as handlers see it."""

    request: server.Request
    frontend: Frontend
    user: str | None
    params: dict[str, str]

    def query(self, name: str) -> str | None:
        values = self.request.args.get(name.encode())
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"query parameter {name!r} is not UTF-8") from None

    def query_int(self, name: str, default: int, minimum: int = 0, maximum: int = 10**9) -> int:
        value = self.query(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise InvalidRequest(f"query parameter {name!r} must be an integer", value=value) from None
        if not minimum <= number <= maximum:
            raise InvalidRequest(
                f"query parameter {name!r} must be between {minimum} and {maximum}", value=number
            )
        return number

    async def while_connected(self, work: Awaitable[Any]) -> Any:
        """
        Await C{work}, cancelling it if the client goes away first; for work
        that costs something and has no use once nobody waits for the answer
        (a workflow check).  Raises C{CancelledError} then.
        """
        deferred = Deferred.fromCoroutine(work) if not isinstance(work, Deferred) else work
        gone = self.request.notifyFinish()
        gone.addErrback(lambda _: deferred.cancel())
        return await deferred

    def body_bytes(self) -> bytes:
        self.request.content.seek(0)
        return self.request.content.read()

    def json_body(self, *, required: bool = True) -> Any:
        """The request's JSON body (415 for another media type, 400 if malformed)."""
        raw = self.body_bytes()
        if not raw:
            if required:
                raise InvalidRequest("this request needs a JSON body")
            return None
        media_type = (self.request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if media_type != JSON_TYPE and not media_type.endswith("+json"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"the body must be {JSON_TYPE}, not {media_type or 'untyped'}",
                content_type=media_type,
            )
        return parse_json_text(raw)

    def json_object(self, *, required: bool = True) -> dict[str, Any]:
        body = self.json_body(required=required)
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, "malformed_json", "the body must be a JSON object")
        return body


@attrs.frozen
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = attrs.Factory(dict)
    # The job this request concerned, for the audit log.
    job_id: str | None = None


# A handler that has written and finished the request itself (a download).
ALREADY_WRITTEN = object()

Handler = Callable[[Call], Awaitable[Any]]


@attrs.frozen
class Route:
    method: bytes
    pattern: re.Pattern
    handler: Handler
    # Audit action name; None for requests that change nothing.
    action: str | None


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, action: str | None = None):
        """C{template} like C{/v1/jobs/{id}/products/{name}}; each {part} is one segment."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        self.routes.append(Route(method.encode(), re.compile(f"^{regex}$"), handler, action))

    def match(self, method: bytes, path: str) -> tuple[Route | None, dict[str, str], list[bytes]]:
        allowed = []
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method or (method == b"HEAD" and route.method == b"GET"):
                return route, {k: unquote(v) for k, v in m.groupdict().items()}, []
            allowed.append(route.method)
        return None, {}, allowed


class ApiResource(resource.Resource):
    """The whole API as one leaf resource; see the module docstring."""

    isLeaf = True
    log = Logger()

    def __init__(self, router: Router, store) -> None:
        super().__init__()
        self._router = router
        self._store = store

    def render(self, request: server.Request):
        answering = Deferred.fromCoroutine(self._answer(request))
        answering.addErrback(self._last_resort, request)
        return server.NOT_DONE_YET

    def _last_resort(self, failure, request) -> None:
        """An exception escaped C{_answer}: log it and still answer."""
        self.log.failure("unanswered request {path}", failure,
                         path=request.path.decode(errors="replace"))
        try:
            self._write_json(request, 500,
                             KreeError("internal error; the daemon's log has the details").to_json())
        except Exception:
            request.channel.transport.abortConnection()

    async def _answer(self, request: server.Request) -> None:
        # Read now: twisted.web drops request.channel once the response is finished.
        transport = request.channel.transport
        fingerprint = peer_fingerprint(transport) if transport is not None else None
        frontend = None
        route = None
        params: dict[str, str] = {}
        user = None
        try:
            path = request.path.decode("utf-8", "strict")
            route, params, allowed = self._router.match(request.method, path)
            # Who asks first, so that even a 413 is audited under its frontend.
            frontend = await self._authenticate(fingerprint)
            if request.body_too_large:
                raise ApiError(
                    413,
                    "too_large",
                    f"request body larger than {request.channel.site.max_body_bytes} bytes",
                    limit=request.channel.site.max_body_bytes,
                )
            user = self._user(request)
            if route is None:
                if allowed:
                    request.setHeader(b"allow", b", ".join(sorted(set(allowed))))
                    raise ApiError(405, "method_not_allowed", "method not allowed on this path",
                                   allowed=sorted(m.decode() for m in set(allowed)))
                raise ApiError(404, "not_found", f"no such resource: {path}")
            result = await route.handler(Call(request, frontend, user, params))
        except Exception as e:
            status, body = self._error(request, e)
            job_id = params.get("id")
            status, body = self._write_json(request, status, body)
            await self._audit(request, route, frontend, fingerprint, user, job_id, status, body)
            return
        if result is ALREADY_WRITTEN:
            return
        if not isinstance(result, Response):
            result = Response(200, result)
        for name, value in result.headers.items():
            request.setHeader(name, value)
        status, body = self._write_json(request, result.status, result.body)
        await self._audit(request, route, frontend, fingerprint, user,
                          result.job_id or params.get("id"), status, body)

    async def _authenticate(self, fingerprint: str | None) -> Frontend:
        if fingerprint is None:
            raise ApiError(401, "unauthenticated", "a client certificate is required")
        frontend = await self._store.frontends.by_fingerprint(fingerprint)
        if frontend is None:
            raise ApiError(403, "unknown_frontend",
                           "this certificate is not registered as a frontend",
                           fingerprint=fingerprint)
        if frontend.revoked:
            raise ApiError(403, "frontend_revoked", f"frontend {frontend.name!r} is revoked",
                           frontend=frontend.name)
        return frontend

    @staticmethod
    def _user(request: server.Request) -> str | None:
        raw = request.requestHeaders.getRawHeaders(USER_HEADER)
        if not raw:
            return None
        try:
            user = raw[-1].decode("utf-8") if isinstance(raw[-1], bytes) else raw[-1]
        except UnicodeDecodeError:
            raise InvalidRequest("X-KREE-User is not UTF-8") from None
        if not user or len(user) > MAX_USER_LENGTH or not user.isprintable():
            raise InvalidRequest(
                f"X-KREE-User must be 1 to {MAX_USER_LENGTH} printable characters"
            )
        return user

    def _error(self, request, error: Exception) -> tuple[int, dict]:
        if isinstance(error, CancelledError) and request._disconnected:
            # The client went away and its request's work was cancelled
            # (Call.while_connected); nobody reads this, the audit log does.
            return CLIENT_GONE, ApiError(CLIENT_GONE, "client_gone",
                                         "the client closed the connection").to_json()
        if isinstance(error, DatabaseUnavailable):
            # The store has waited for the database already (and logged it).
            request.setHeader(b"retry-after", str(RETRY_AFTER_SECONDS).encode())
        elif getattr(error, "retry_after_seconds", None) is not None:
            # An error that knows when to try again (a busy workflow checker).
            request.setHeader(b"retry-after", str(error.retry_after_seconds).encode())
        if isinstance(error, KreeError):
            return error.status, error.to_json()
        if isinstance(error, UnicodeDecodeError):
            return 400, InvalidRequest("the request path is not UTF-8").to_json()
        self.log.error(
            "internal error on {method} {path}: {traceback}",
            method=request.method.decode(errors="replace"),
            path=request.path.decode(errors="replace"),
            traceback="".join(traceback.format_exception(error)),
        )
        return 500, KreeError("internal error; the daemon's log has the details").to_json()

    def _write_json(self, request: server.Request, status: int, body: Any) -> tuple[int, Any]:
        """
        Send C{body} as the response; the status and body actually sent
        (a 500 if the body cannot be encoded as strict JSON in UTF-8).
        """
        if request.finished or request._disconnected:
            return status, body
        if not (status == 204 or body is None):
            try:
                data = json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                                  allow_nan=False).encode("utf-8")
            except (ValueError, TypeError, RecursionError) as e:
                # UnicodeEncodeError is a ValueError.  Never a hung request.
                self.log.error("cannot encode the response to {method} {path}: {error}",
                               method=request.method.decode(errors="replace"),
                               path=request.path.decode(errors="replace"), error=repr(e))
                status = 500
                body = KreeError("internal error; the daemon's log has the details").to_json()
                data = json.dumps(body).encode()
        request.setResponseCode(status)
        if status == 204 or body is None:
            request.setHeader(b"content-length", b"0")
            request.finish()
            return status, body
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"content-length", str(len(data)).encode())
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(data)
        request.finish()
        return status, body

    async def _audit(self, request, route, frontend, fingerprint, user, job_id, status,
                     body) -> None:
        """
        One audit record for every request that tries to change something,
        and for every refused request (any method), with the certificate's
        fingerprint, the status and the error code.
        """
        if request.method in (b"GET", b"HEAD") and status < 400:
            return
        action = route.action if route is not None and route.action else (
            f"{request.method.decode(errors='replace')} {request.path.decode(errors='replace')}"[:64]
        )
        outcome = "ok" if status < 400 else ("refused" if status < 500 else "failed")
        details = None
        if status >= 400:
            code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
            details = {"error": code, "fingerprint": fingerprint}
        try:
            await self._store.audit.record(
                actor=frontend.name if frontend else "unknown",
                frontend_id=frontend.id if frontend else None,
                user=user,
                action=action,
                job_id=job_id,
                outcome=outcome,
                status=status,
                details=details,
            )
        except Exception:
            self.log.failure("could not write the audit record for {action}", action=action)


def _bare_error(status: int, reason: bytes, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response, for refusals before a request exists."""
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(body), body))


class ApiChannel(http.HTTPChannel):
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


class ApiSite(server.Site):
    """
    The API's site: bodies up to C{max_body_bytes}, idle connections closed
    after C{idle_timeout} seconds without a byte, request heads due within
    C{head_timeout} seconds (L{ApiChannel}).
    """

    requestFactory = LimitedRequest
    protocol = ApiChannel

    def __init__(self, root, max_body_bytes: int, reactor=None, *,
                 idle_timeout: float = 60.0, head_timeout: float = 20.0) -> None:
        super().__init__(root, reactor=reactor, timeout=idle_timeout)
        self.max_body_bytes = max_body_bytes
        self.head_timeout = head_timeout
        self.displayTracebacks = False

    def log(self, request):
        # Access lines go to twisted.logger at debug level, as fields.
        ApiResource.log.debug(
            "{method} {path} {status} {frontend_fingerprint}",
            method=request.method.decode(errors="replace"),
            path=request.uri.decode(errors="replace"),
            status=request.code,
            frontend_fingerprint=getattr(request.channel.transport, "_kree_peer_fingerprint", None),
        )
