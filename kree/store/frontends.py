"""Registered frontends: who may call the API (by certificate fingerprint)."""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from kree.errors import Conflict, FrontendNotFound
from kree.records import Frontend
from kree.store import model
from kree.store.events import utcnow


def _frontend(row) -> Frontend:
    return Frontend(row.id, row.name, row.fingerprint, row.subject, row.created_at, row.revoked_at)


class FrontendsStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def add(self, name: str, fingerprint: str, subject: str = "") -> Frontend:
        return await self._pool.run(self.add_thd, name, fingerprint, subject)

    def add_thd(self, conn, name: str, fingerprint: str, subject: str = "",
                now: datetime.datetime | None = None) -> Frontend:
        fingerprint = fingerprint.lower().replace(":", "")
        f = model.frontends
        clash = conn.execute(
            sa.select(f.c.name).where(sa.or_(f.c.name == name, f.c.fingerprint == fingerprint))
        ).first()
        if clash is not None:
            raise Conflict(
                f"a frontend with this name or certificate exists already ({clash.name!r})",
                frontend=clash.name,
            )
        conn.execute(f.insert().values(
            name=name, fingerprint=fingerprint, subject=subject, created_at=now or utcnow()))
        return self.get_thd(conn, name)

    async def get(self, name: str) -> Frontend:
        return await self._pool.run(self.get_thd, name)

    def get_thd(self, conn, name: str) -> Frontend:
        row = conn.execute(
            sa.select(model.frontends).where(model.frontends.c.name == name)
        ).one_or_none()
        if row is None:
            raise FrontendNotFound(name)
        return _frontend(row)

    async def by_id(self, frontend_id: int) -> Frontend | None:
        return await self._pool.run(self.by_id_thd, frontend_id)

    def by_id_thd(self, conn, frontend_id: int) -> Frontend | None:
        row = conn.execute(
            sa.select(model.frontends).where(model.frontends.c.id == frontend_id)
        ).one_or_none()
        return _frontend(row) if row is not None else None

    async def by_fingerprint(self, fingerprint: str) -> Frontend | None:
        """The frontend with this certificate, revoked or not; None if unknown."""
        return await self._pool.run(self.by_fingerprint_thd, fingerprint)

    def by_fingerprint_thd(self, conn, fingerprint: str) -> Frontend | None:
        row = conn.execute(
            sa.select(model.frontends).where(model.frontends.c.fingerprint == fingerprint.lower())
        ).one_or_none()
        return _frontend(row) if row is not None else None

    async def list(self) -> list[Frontend]:
        return await self._pool.run(self.list_thd)

    def list_thd(self, conn) -> list[Frontend]:
        rows = conn.execute(sa.select(model.frontends).order_by(model.frontends.c.name))
        return [_frontend(row) for row in rows]

    async def revoke(self, name: str) -> Frontend:
        return await self._pool.run(self.revoke_thd, name)

    def revoke_thd(self, conn, name: str, now: datetime.datetime | None = None) -> Frontend:
        frontend = self.get_thd(conn, name)
        if frontend.revoked_at is None:
            conn.execute(
                model.frontends.update()
                .where(model.frontends.c.id == frontend.id)
                .values(revoked_at=now or utcnow())
            )
        return self.get_thd(conn, name)
