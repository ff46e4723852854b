"""The audit log: one record for every action that changes something."""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa

from kree.records import AuditRecord
from kree.store import model
from kree.store.events import utcnow


class AuditStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def record(self, **kwargs) -> None:
        await self._pool.run(self.record_thd, **kwargs)

    def record_thd(self, conn, *, actor: str, action: str, outcome: str,
                   frontend_id: int | None = None, user: str | None = None,
                   job_id: str | None = None, status: int | None = None,
                   details: dict[str, Any] | None = None,
                   now: datetime.datetime | None = None) -> None:
        conn.execute(model.audit_log.insert().values(
            time=now or utcnow(), actor=actor, frontend_id=frontend_id, end_user=user,
            action=action, job_id=job_id, outcome=outcome, status=status, details=details,
        ))

    async def list(self, limit: int = 100, job_id: str | None = None) -> list[AuditRecord]:
        return await self._pool.run(self.list_thd, limit, job_id)

    def list_thd(self, conn, limit: int = 100, job_id: str | None = None) -> list[AuditRecord]:
        log = model.audit_log
        query = sa.select(log).order_by(log.c.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(log.c.job_id == job_id)
        return [
            AuditRecord(r.id, r.time, r.actor, r.frontend_id, r.end_user, r.action, r.job_id,
                        r.outcome, r.status, r.details)
            for r in conn.execute(query)
        ]
