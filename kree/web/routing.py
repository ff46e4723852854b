"""
Routing for every dialect: handlers registered by method and path template,
and what a handler sees of its request (L{Call}) and gives back
(L{Response}).  Nothing here knows a dialect's body formats or error shapes.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import attrs
from twisted.internet.defer import Deferred
from twisted.web import server

from kree.errors import HttpError, InvalidRequest
from kree.records import Frontend
from kree.web.jsontext import parse_json_text

JSON_TYPE = "application/json"


@attrs.define
class Call:
    """One request, as handlers see it: the frontend already authenticated."""

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

    def media_type(self) -> str:
        return (self.request.getHeader("content-type") or "").split(";")[0].strip().lower()

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
        media_type = self.media_type()
        if media_type != JSON_TYPE and not media_type.endswith("+json"):
            raise HttpError(
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
            raise HttpError(400, "malformed_json", "the body must be a JSON object")
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
