"""
POST /v1/workflows: upload a workflow document (L{JobService.upload_workflow}).

The document is stored once by its SHA-256 and named
C{kree:workflow/<sha256>}; uploading the same bytes again answers the same
URI (200 instead of 201, for the frontend that uploaded them before: what
others uploaded is never revealed, and a job may name only its own
frontend's uploads).  The media type says which engine kind it is for
(XML: MoML; YAML, JSON or application/cwl: CWL), and that kind checks that
it is one of its documents (well-formed MoML, root <entity>, no entity
declarations; a YAML or JSON mapping with cwlVersion); the full check comes
when a job names it.
"""

from __future__ import annotations

from kree.engines import ENGINE_KINDS, kind_for_media_type
from kree.errors import HttpError
from kree.jobs import JobService
from kree.web.routing import Call, Response, Router


class WorkflowsApi:
    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs

    def register(self, router: Router) -> None:
        router.add("POST", "/v1/workflows", self.upload, "workflow.upload")

    async def upload(self, call: Call) -> Response:
        media_type = call.media_type()
        kind = kind_for_media_type(media_type)
        if kind is None:
            offered = " or ".join(k.media_types[0] for k in ENGINE_KINDS.values())
            raise HttpError(415, "unsupported_media_type",
                            f"a workflow must be sent as {offered}, "
                            f"not {media_type or 'untyped'}", content_type=media_type)
        upload = await self._jobs.upload_workflow(call.frontend.id, call.body_bytes(), kind=kind)
        body = {"uri": upload.uri, "sha256": upload.sha256, "size": upload.size}
        return Response(201 if upload.first else 200, body,
                        {"location": f"/v1/workflows/{upload.sha256}"})
