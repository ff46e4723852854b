"""
What each frontend has itself handed to KREE, so that answers to one
frontend depend only on its own work: the workflow documents it uploaded,
and the input URIs its jobs named.  Uploads and cache entries are shared by
content; these queries keep one frontend from learning another's.
"""

from __future__ import annotations

import sqlalchemy as sa

from kree.store import model
from kree.store.events import utcnow


class OwnershipStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    async def record_upload(self, frontend_id: int, sha256: str) -> bool:
        """Note that C{frontend_id} uploaded this document; True the first time."""
        return await self._pool.run(self.record_upload_thd, frontend_id, sha256)

    def record_upload_thd(self, conn, frontend_id: int, sha256: str) -> bool:
        if self.uploaded_thd(conn, frontend_id, sha256):
            return False
        conn.execute(sa.insert(model.workflow_uploads).values(
            frontend_id=frontend_id, sha256=sha256, uploaded_at=utcnow()))
        return True

    async def uploaded(self, frontend_id: int, sha256: str) -> bool:
        return await self._pool.run(self.uploaded_thd, frontend_id, sha256)

    def uploaded_thd(self, conn, frontend_id: int, sha256: str) -> bool:
        uploads = model.workflow_uploads
        row = conn.execute(sa.select(uploads.c.sha256).where(
            uploads.c.frontend_id == frontend_id, uploads.c.sha256 == sha256)).first()
        return row is not None

    async def input_uris_used(self, frontend_id: int, uris: list[str]) -> set[str]:
        """Those of C{uris} that some job of C{frontend_id} named as an input."""
        return await self._pool.run(self.input_uris_used_thd, frontend_id, uris)

    def input_uris_used_thd(self, conn, frontend_id: int, uris: list[str]) -> set[str]:
        if not uris:
            return set()
        inputs, jobs = model.job_inputs, model.jobs
        rows = conn.execute(
            sa.select(inputs.c.uri).distinct()
            .join(jobs, jobs.c.id == inputs.c.job_id)
            .where(jobs.c.frontend_id == frontend_id, inputs.c.uri.in_(uris)))
        return {row.uri for row in rows}
