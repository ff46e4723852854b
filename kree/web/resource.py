"""
The one resource on the listener, shared by every dialect: it picks the
dialect by path prefix, authenticates the frontend, routes the request to
the dialect's handler, renders the answer or the error in the dialect's
shape, and writes the audit trail.

A L{Dialect} brings its L{Router} and says how its bodies and errors look
(JSON errors for /v1, WES's C{{msg, status_code}}, UWS's XML); handlers are
C{async def} functions answered with C{Deferred.fromCoroutine}, so
twisted.web never blocks, and every failure becomes an error body in the
dialect's shape: nothing a caller sends can produce a traceback.

Authentication happens per request: the TLS layer has already verified the
client certificate against the CA; here its fingerprint must be a registered
frontend that is not revoked (L{Frontends.authenticate}: 401 or 403
otherwise).  Because the lookup is per request, revoking a frontend takes
effect on its next request.
"""

from __future__ import annotations

import json
import traceback
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web import resource, server

from kree.errors import DatabaseUnavailable, HttpError, InvalidRequest, KreeError
from kree.records import Frontend
from kree.web.routing import ALREADY_WRITTEN, Call, Response, Route, Router
from kree.web.tls import peer_fingerprint

USER_HEADER = b"x-kree-user"
MAX_USER_LENGTH = 255
# What a 503 for an unavailable database suggests to wait before trying again.
RETRY_AFTER_SECONDS = 5
# The status audited for a request whose client left before its answer (nginx's 499).
CLIENT_GONE = 499
INTERNAL = "internal error; the daemon's log has the details"


class Frontends(Protocol):
    """Who is asking, and the audit trail (kree.frontends.FrontendService)."""

    async def authenticate(self, fingerprint: str | None) -> Frontend:
        """The frontend of a verified certificate; raises a 401/403 KreeError."""

    async def audit(self, *, actor: str, frontend_id: int | None, user: str | None,
                    action: str, job_id: str | None, outcome: str, status: int,
                    details: dict[str, Any] | None) -> None:
        """Record one audited request."""


class Dialect(Protocol):
    """One API on the listener: its path prefix, routes and body formats."""

    #: Requests whose path starts with this are the dialect's ("/v1").
    prefix: str
    router: Router

    def error_body(self, status: int, error: KreeError) -> Any:
        """The body of an error answer, in the dialect's shape."""

    def encode(self, request: server.Request, status: int, body: Any) -> tuple[bytes, bytes]:
        """
        (content type, bytes) of a body; raises ValueError or TypeError if
        the body cannot be encoded (answered 500 then).
        """


class JsonDialect:
    """A dialect whose bodies are strict JSON in UTF-8 and errors DESIGN.md's shape."""

    content_type = b"application/json; charset=utf-8"

    def __init__(self, prefix: str, router: Router) -> None:
        self.prefix = prefix
        self.router = router

    def error_body(self, status: int, error: KreeError) -> Any:
        return error.to_json()

    def encode(self, request: server.Request, status: int, body: Any) -> tuple[bytes, bytes]:
        return self.content_type, json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                                             allow_nan=False).encode("utf-8")


class WebResource(resource.Resource):
    """Every dialect as one leaf resource; see the module docstring."""

    isLeaf = True
    log = Logger()

    def __init__(self, dialects: list[Dialect], frontends: Frontends) -> None:
        """
        @param dialects: the first is the default, for paths no prefix claims
            (it answers them 404 in its own shape).
        """
        super().__init__()
        # Longest prefix first, so /ga4gh/wes/v1 is never taken by a shorter one.
        self._dialects = sorted(dialects, key=lambda d: -len(d.prefix))
        self._default = dialects[0]
        self._frontends = frontends

    def _dialect(self, path: str) -> Dialect:
        for dialect in self._dialects:
            if path == dialect.prefix or path.startswith(dialect.prefix.rstrip("/") + "/"):
                return dialect
        return self._default

    def render(self, request: server.Request):
        answering = Deferred.fromCoroutine(self._answer(request))
        answering.addErrback(self._last_resort, request)
        return server.NOT_DONE_YET

    def _last_resort(self, failure, request) -> None:
        """An exception escaped C{_answer}: log it and still answer."""
        self.log.failure("unanswered request {path}", failure,
                         path=request.path.decode(errors="replace"))
        try:
            dialect = self._dialect(request.path.decode("utf-8", "replace"))
            self._write(dialect, request, 500, dialect.error_body(500, KreeError(INTERNAL)))
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
        dialect = self._default
        try:
            path = request.path.decode("utf-8", "strict")
            dialect = self._dialect(path)
            route, params, allowed = dialect.router.match(request.method, path)
            # Who asks first, so that even a 413 is audited under its frontend.
            frontend = await self._frontends.authenticate(fingerprint)
            if request.body_too_large:
                raise HttpError(
                    413,
                    "too_large",
                    f"request body larger than {request.channel.site.max_body_bytes} bytes",
                    limit=request.channel.site.max_body_bytes,
                )
            user = self._user(request)
            if route is None:
                if allowed:
                    request.setHeader(b"allow", b", ".join(sorted(set(allowed))))
                    raise HttpError(405, "method_not_allowed", "method not allowed on this path",
                                    allowed=sorted(m.decode() for m in set(allowed)))
                raise HttpError(404, "not_found", f"no such resource: {path}")
            result = await route.handler(Call(request, frontend, user, params))
        except Exception as e:
            status, error = self._error(request, e)
            status = self._write(dialect, request, status, dialect.error_body(status, error))
            await self._audit(request, route, frontend, fingerprint, user, params.get("id"),
                              status, error.code)
            return
        if result is ALREADY_WRITTEN:
            return
        if not isinstance(result, Response):
            result = Response(200, result)
        for name, value in result.headers.items():
            request.setHeader(name, value)
        status = self._write(dialect, request, result.status, result.body)
        await self._audit(request, route, frontend, fingerprint, user,
                          result.job_id or params.get("id"), status,
                          "internal_error" if status >= 500 else None)

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

    def _error(self, request, error: Exception) -> tuple[int, KreeError]:
        if isinstance(error, CancelledError) and request._disconnected:
            # The client went away and its request's work was cancelled
            # (Call.while_connected); nobody reads this, the audit log does.
            return CLIENT_GONE, HttpError(CLIENT_GONE, "client_gone",
                                          "the client closed the connection")
        if isinstance(error, DatabaseUnavailable):
            # The store has waited for the database already (and logged it).
            request.setHeader(b"retry-after", str(RETRY_AFTER_SECONDS).encode())
        elif getattr(error, "retry_after_seconds", None) is not None:
            # An error that knows when to try again (a busy workflow checker).
            request.setHeader(b"retry-after", str(error.retry_after_seconds).encode())
        if isinstance(error, KreeError):
            return error.status, error
        if isinstance(error, UnicodeDecodeError):
            return 400, InvalidRequest("the request path is not UTF-8")
        self.log.error(
            "internal error on {method} {path}: {traceback}",
            method=request.method.decode(errors="replace"),
            path=request.path.decode(errors="replace"),
            traceback="".join(traceback.format_exception(error)),
        )
        return 500, KreeError(INTERNAL)

    def _write(self, dialect: Dialect, request: server.Request, status: int, body: Any) -> int:
        """
        Send C{body} as the response in the dialect's format; the status
        actually sent (a 500 if the body cannot be encoded).
        """
        if request.finished or request._disconnected:
            return status
        empty = status == 204 or body is None
        if not empty:
            try:
                content_type, data = dialect.encode(request, status, body)
            except (ValueError, TypeError, RecursionError) as e:
                # UnicodeEncodeError is a ValueError.  Never a hung request.
                self.log.error("cannot encode the response to {method} {path}: {error}",
                               method=request.method.decode(errors="replace"),
                               path=request.path.decode(errors="replace"), error=repr(e))
                status = 500
                content_type, data = dialect.encode(
                    request, status, dialect.error_body(status, KreeError(INTERNAL)))
        request.setResponseCode(status)
        if empty:
            request.setHeader(b"content-length", b"0")
            request.finish()
            return status
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", str(len(data)).encode())
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(data)
        request.finish()
        return status

    async def _audit(self, request, route: Route | None, frontend: Frontend | None,
                     fingerprint: str | None, user: str | None, job_id: str | None,
                     status: int, error_code: str | None) -> None:
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
            details = {"error": error_code, "fingerprint": fingerprint}
        try:
            await self._frontends.audit(
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
