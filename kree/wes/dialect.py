"""
The WES dialect's shape on the shared listener: JSON bodies, errors as
WES's C{ErrorResponse} (C{{msg, status_code}}), and plain-text pages (the
run logs, the authentication instructions) for handlers that answer with a
L{TextBody}.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web import server

from kree.errors import KreeError
from kree.web.resource import JsonDialect
from kree.web.routing import Router

PREFIX = "/ga4gh/wes/v1"


@attrs.frozen
class TextBody:
    text: str
    media_type: str = "text/plain"


class WesDialect(JsonDialect):
    def __init__(self, router: Router) -> None:
        super().__init__(PREFIX, router)

    def error_body(self, status: int, error: KreeError) -> Any:
        return {"msg": error.message, "status_code": status}

    def encode(self, request: server.Request, status: int, body: Any) -> tuple[bytes, bytes]:
        if isinstance(body, TextBody):
            return f"{body.media_type}; charset=utf-8".encode(), body.text.encode("utf-8")
        return super().encode(request, status, body)
