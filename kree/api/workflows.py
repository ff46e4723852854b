"""
POST /v1/workflows: upload a workflow document.

The document is stored once by its SHA-256 in <state-dir>/cache/ and named
C{kree:workflow/<sha256>}; uploading the same bytes again answers the same
URI (200 instead of 201, for the frontend that uploaded them before: what
others uploaded is never revealed, and a job may name only its own
frontend's uploads).  XML from outside is parsed with defusedxml: the
DOCTYPE line real MoML files carry is accepted and never fetched, entity
declarations are refused.  Full validation of the model is the engine's
(issue 4); here the document must be well-formed MoML (root <entity>).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException
from twisted.internet.threads import deferToThreadPool

from kree.api.resource import ApiError, Call, Response, Router
from kree.fetch import store_document

XML_TYPES = ("application/xml", "text/xml", "application/x-moml+xml")


def check_moml(data: bytes) -> None:
    try:
        root = DefusedET.fromstring(
            data, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException as e:
        raise ApiError(422, "invalid_workflow", f"refused XML construct: {e}") from None
    except DefusedET.ParseError as e:
        raise ApiError(422, "invalid_workflow", f"not well-formed XML: {e}") from None
    except RecursionError:
        raise ApiError(422, "invalid_workflow", "the document is nested too deeply") from None
    if root.tag not in ("entity", "class"):
        raise ApiError(422, "invalid_workflow",
                       f"not a MoML workflow: the root element is <{root.tag}>, not <entity>")


class WorkflowsApi:
    def __init__(self, store, cache_dir: Path, reactor, threadpool) -> None:
        self._store = store
        self._cache_dir = Path(cache_dir)
        self._reactor = reactor
        self._threadpool = threadpool

    def register(self, router: Router) -> None:
        router.add("POST", "/v1/workflows", self.upload, "workflow.upload")

    async def upload(self, call: Call) -> Response:
        media_type = (call.request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if media_type not in XML_TYPES and not media_type.endswith("+xml"):
            raise ApiError(415, "unsupported_media_type",
                           f"a workflow must be sent as {XML_TYPES[0]}, not {media_type or 'untyped'}",
                           content_type=media_type)
        data = call.body_bytes()
        if not data:
            raise ApiError(400, "invalid_request", "the workflow document is empty")
        # Parsing and hashing a large document is CPU work: off the reactor.
        sha256 = await deferToThreadPool(self._reactor, self._threadpool, self._check_and_hash, data)
        uri = f"kree:workflow/{sha256}"
        existing = await self._store.cache.get(uri)
        await deferToThreadPool(self._reactor, self._threadpool,
                                store_document, self._cache_dir, sha256, data)
        if existing is None:
            await self._store.cache.record_fetch(uri, sha256=sha256, size=len(data))
        first = await self._store.ownership.record_upload(call.frontend.id, sha256)
        body = {"uri": uri, "sha256": sha256, "size": len(data)}
        return Response(201 if first else 200, body, {"location": f"/v1/workflows/{sha256}"})

    @staticmethod
    def _check_and_hash(data: bytes) -> str:
        check_moml(data)
        return hashlib.sha256(data).hexdigest()
