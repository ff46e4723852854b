"""
Who is asking: the frontend a verified client certificate belongs to, and
the audit trail of what frontends (and the admin) asked.  Every dialect
authenticates through L{FrontendService}; kree.web calls it per request, so
revoking a frontend takes effect on its next request.
"""

from __future__ import annotations

from typing import Any

from kree.errors import FrontendRevoked, Unauthenticated, UnknownFrontend
from kree.records import Frontend
from kree.store import Store


class FrontendService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def authenticate(self, fingerprint: str | None) -> Frontend:
        """
        The registered, unrevoked frontend of a verified certificate.

        @raise Unauthenticated: no client certificate (401).
        @raise UnknownFrontend: the certificate is not a frontend's (403).
        @raise FrontendRevoked: the frontend is revoked (403).
        """
        if fingerprint is None:
            raise Unauthenticated("a client certificate is required")
        frontend = await self._store.frontends.by_fingerprint(fingerprint)
        if frontend is None:
            raise UnknownFrontend("this certificate is not registered as a frontend",
                                  fingerprint=fingerprint)
        if frontend.revoked:
            raise FrontendRevoked(f"frontend {frontend.name!r} is revoked",
                                  frontend=frontend.name)
        return frontend

    async def audit(self, *, actor: str, action: str, outcome: str,
                    frontend_id: int | None = None, user: str | None = None,
                    job_id: str | None = None, status: int | None = None,
                    details: dict[str, Any] | None = None) -> None:
        """Append one record to the audit trail."""
        await self._store.audit.record(actor=actor, frontend_id=frontend_id, user=user,
                                       action=action, job_id=job_id, outcome=outcome,
                                       status=status, details=details)
