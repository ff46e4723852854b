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
import re
import traceback
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import resource, server

from kree.api.tls import peer_fingerprint
from kree.errors import DatabaseUnavailable, InvalidRequest, KreeError
from kree.records import Frontend

JSON_TYPE = "application/json"
USER_HEADER = b"x-kree-user"
MAX_USER_LENGTH = 255
# What a 503 for an unavailable database suggests to wait before trying again.
RETRY_AFTER_SECONDS = 5


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
        try:
            # JSON is UTF-8 (RFC 8259); json.loads(bytes) would also guess UTF-16/32.
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidRequest("the body is not UTF-8") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None

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
        Deferred.fromCoroutine(self._answer(request))
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request) -> None:
        frontend = None
        route = None
        params: dict[str, str] = {}
        user = None
        try:
            path = request.path.decode("utf-8", "strict")
            route, params, allowed = self._router.match(request.method, path)
            if request.body_too_large:
                raise ApiError(
                    413,
                    "too_large",
                    f"request body larger than {request.channel.site.max_body_bytes} bytes",
                    limit=request.channel.site.max_body_bytes,
                )
            frontend = await self._authenticate(request)
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
            self._write_json(request, status, body)
            await self._audit(request, route, frontend, user, job_id, status, body)
            return
        if result is ALREADY_WRITTEN:
            return
        if not isinstance(result, Response):
            result = Response(200, result)
        for name, value in result.headers.items():
            request.setHeader(name, value)
        self._write_json(request, result.status, result.body)
        await self._audit(request, route, frontend, user, result.job_id or params.get("id"),
                          result.status, None)

    async def _authenticate(self, request: server.Request) -> Frontend:
        transport = request.channel.transport
        fingerprint = peer_fingerprint(transport) if transport is not None else None
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

    @staticmethod
    def _write_json(request: server.Request, status: int, body: Any) -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        if status == 204 or body is None:
            request.setHeader(b"content-length", b"0")
            request.finish()
            return
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"content-length", str(len(data)).encode())
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(data)
        request.finish()

    async def _audit(self, request, route, frontend, user, job_id, status, body) -> None:
        """One audit record for every request that tries to change something."""
        if request.method in (b"GET", b"HEAD"):
            return
        action = route.action if route is not None and route.action else (
            f"{request.method.decode(errors='replace')} {request.path.decode(errors='replace')}"[:64]
        )
        outcome = "ok" if status < 400 else ("refused" if status < 500 else "failed")
        details = None
        if body is not None:
            details = {"error": body["error"]["code"]}
        if frontend is None:
            fingerprint = getattr(request.channel.transport, "_kree_peer_fingerprint", None)
            details = {**(details or {}), "fingerprint": fingerprint}
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


class ApiSite(server.Site):
    requestFactory = LimitedRequest
    # Idle connections are closed after this many seconds.
    timeOut = 120

    def __init__(self, root, max_body_bytes: int, reactor=None) -> None:
        super().__init__(root, reactor=reactor)
        self.max_body_bytes = max_body_bytes
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
