"""
The index of the workflow and input cache: which URI gave which bytes
(by SHA-256), with the validators to revalidate it.  The bytes themselves
live in <state-dir>/cache/ (kree.fetch).
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from kree.records import CacheEntry
from kree.store import model
from kree.store.events import utcnow


def _entry(row) -> CacheEntry:
    return CacheEntry(row.uri, row.sha256, row.size, row.etag, row.last_modified,
                      row.fetched_at, row.checked_at)


class CacheStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def get(self, uri: str) -> CacheEntry | None:
        return await self._pool.run(self.get_thd, uri)

    def get_thd(self, conn, uri: str) -> CacheEntry | None:
        row = conn.execute(
            sa.select(model.workflow_cache).where(model.workflow_cache.c.uri == uri)
        ).one_or_none()
        return _entry(row) if row is not None else None

    async def record_fetch(self, uri: str, **kwargs) -> CacheEntry:
        return await self._pool.run(self.record_fetch_thd, uri, **kwargs)

    def record_fetch_thd(self, conn, uri: str, *, sha256: str, size: int,
                         etag: str | None = None, last_modified: str | None = None,
                         now: datetime.datetime | None = None) -> CacheEntry:
        """A fresh body was fetched (or uploaded): insert or replace the entry."""
        now = now or utcnow()
        wc = model.workflow_cache
        values = dict(sha256=sha256, size=size, etag=etag, last_modified=last_modified,
                      fetched_at=now, checked_at=now)
        updated = conn.execute(wc.update().where(wc.c.uri == uri).values(**values)).rowcount
        if not updated:
            conn.execute(wc.insert().values(uri=uri, **values))
        return self.get_thd(conn, uri)

    async def record_revalidated(self, uri: str) -> CacheEntry | None:
        return await self._pool.run(self.record_revalidated_thd, uri)

    def record_revalidated_thd(self, conn, uri: str, now: datetime.datetime | None = None):
        """The origin answered 304: the cached body is still current."""
        wc = model.workflow_cache
        conn.execute(wc.update().where(wc.c.uri == uri).values(checked_at=now or utcnow()))
        return self.get_thd(conn, uri)

    async def list(self) -> list[CacheEntry]:
        return await self._pool.run(self.list_thd)

    def list_thd(self, conn) -> list[CacheEntry]:
        rows = conn.execute(sa.select(model.workflow_cache).order_by(model.workflow_cache.c.uri))
        return [_entry(row) for row in rows]

    async def purge(self, uri: str | None = None) -> int:
        return await self._pool.run(self.purge_thd, uri)

    def purge_thd(self, conn, uri: str | None = None) -> int:
        """Forget one URI, or every entry; the count removed."""
        query = model.workflow_cache.delete()
        if uri is not None:
            query = query.where(model.workflow_cache.c.uri == uri)
        return conn.execute(query).rowcount
