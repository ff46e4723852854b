"""
The admin's actor policy (allow | replace:<Class> | remove | reject per
actor class) and the third-party software registry, both read by the daemon
when it prepares a job (policy.json in the job directory) and shown by
GET /v1/capabilities.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa

from kree.store import model
from kree.store.events import utcnow


class PoliciesStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def all(self) -> dict[str, str]:
        return await self._pool.run(self.all_thd)

    def all_thd(self, conn) -> dict[str, str]:
        table = model.actor_policies
        rows = conn.execute(sa.select(table.c.actor_class, table.c.policy)
                            .order_by(table.c.actor_class))
        return {actor_class: policy for actor_class, policy in rows}

    async def set(self, actor_class: str, rule: str) -> None:
        await self._pool.run(self.set_thd, actor_class, rule)

    def set_thd(self, conn, actor_class: str, rule: str,
                now: datetime.datetime | None = None) -> None:
        table = model.actor_policies
        conn.execute(table.delete().where(table.c.actor_class == actor_class))
        conn.execute(table.insert().values(actor_class=actor_class, policy=rule,
                                           updated_at=now or utcnow()))

    async def software(self) -> dict[str, dict[str, Any] | None]:
        return await self._pool.run(self.software_thd)

    def software_thd(self, conn) -> dict[str, dict[str, Any] | None]:
        rows = conn.execute(sa.select(model.software).order_by(model.software.c.name))
        return {r.name: ({"path": r.path, "version": r.version} if r.path else None)
                for r in rows}

    async def record_software(self, found: dict[str, dict[str, Any] | None]) -> None:
        await self._pool.run(self.record_software_thd, found)

    def record_software_thd(self, conn, found: dict[str, dict[str, Any] | None],
                            now: datetime.datetime | None = None) -> None:
        """Replace the registry with what a detection found (None: absent)."""
        now = now or utcnow()
        conn.execute(model.software.delete())
        for name, entry in found.items():
            conn.execute(model.software.insert().values(
                name=name, path=entry["path"] if entry else None,
                version=entry.get("version") if entry else None, detected_at=now))
