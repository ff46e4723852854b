"""
The run endpoints of WES 1.1 over the job service: a run is a KREE job
(run_id = job id, visible under /v1 too), so every handler parses, calls
one use case and renders.  Another frontend's run is a 404, as under /v1.

What WES asks that the job record has no field for, the run request as the
client sent it (its tags, its workflow_url), is kept as the run's first
message, from source C{wes.request}: written through the job service, kept
with the job and deleted with it.  A job made under /v1 has none; its run
request is rebuilt from the job record.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger

from kree import __version__, jobspec
from kree.engines import MOML
from kree.errors import HttpError, InvalidRequest, KreeError
from kree.ids import looks_like_job_id
from kree.jobs import JobService, Submission
from kree.records import Job, JobDetail, Message, isoformat
from kree.states import Action
from kree.web.jsontext import parse_json_text
from kree.web.routing import Call, Response, Router
from kree.wes.dialect import PREFIX, TextBody
from kree.wes.multipart import Part, parse_form
from kree.wes.states import wes_state
from kree.wes.workflows import WorkflowType, workflow_types

ENGINE = "kree"
DEFAULT_PAGE = 50
MAX_PAGE = 500
#: The source of the message that keeps a run's request.
REQUEST_SOURCE = "wes.request"
#: The source of what this dialect says in a run's log (ignored parameters).
NOTE_SOURCE = "wes"
#: The first messages of a run searched for its request (an engine starting
#: at once may write a few before the request's is committed).
REQUEST_SEARCH = 100
#: Messages read per page when rendering a run's log as text.
LOG_PAGE = 500

FIELDS = ("workflow_params", "workflow_type", "workflow_type_version", "tags",
          "workflow_engine", "workflow_engine_version", "workflow_engine_parameters",
          "workflow_url")
ATTACHMENT = "workflow_attachment"
#: workflow_engine_parameters this KREE understands: none yet.
ENGINE_PARAMETERS: frozenset[str] = frozenset()


def _as_bad_request(error: KreeError) -> KreeError:
    """POST /runs documents 400 for every refused request: a 422 (a bad workflow) becomes one."""
    if 400 <= error.status < 500 and error.status not in (400, 401, 403, 413):
        return HttpError(400, error.code, error.message, **error.details)
    return error


def encode_token(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    try:
        job_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("page_token is not a token this service gave") from None
    if not looks_like_job_id(job_id) or encode_token(job_id) != token:
        raise InvalidRequest("page_token is not a token this service gave")
    return job_id


def check_attachment_name(name: str | None) -> str:
    """A relative path without '..' (subdirectories allowed), normalised."""
    if not name:
        raise InvalidRequest("every workflow_attachment part needs a file name")
    if "\\" in name or "\x00" in name or not name.isprintable():
        raise InvalidRequest(f"attachment file name {name!r} is not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidRequest(
            f"attachment file name {name!r} must be relative and must not contain '..'")
    parts = [part for part in path.parts if part != "."]
    if not parts:
        raise InvalidRequest(f"attachment file name {name!r} names no file")
    return "/".join(parts)


def _json_field(fields: dict[str, str], name: str) -> Any:
    if name not in fields:
        return None
    try:
        return parse_json_text(fields[name].encode("utf-8"))
    except KreeError as e:
        raise InvalidRequest(f"{name} must be a JSON document: {e.message}") from None


class RunsApi:
    log = Logger()

    def __init__(self, jobs: JobService, *, schemes: tuple[str, ...]) -> None:
        """@param schemes: what an absolute workflow_url may be (the protocols offered)."""
        self._jobs = jobs
        self._schemes = schemes

    def register(self, router: Router) -> None:
        router.add("GET", f"{PREFIX}/runs", self.list)
        router.add("POST", f"{PREFIX}/runs", self.create, "job.create")
        router.add("GET", f"{PREFIX}/runs/{{id}}", self.get)
        router.add("GET", f"{PREFIX}/runs/{{id}}/status", self.status)
        router.add("POST", f"{PREFIX}/runs/{{id}}/cancel", self.cancel, "job.stop")
        router.add("GET", f"{PREFIX}/runs/{{id}}/tasks", self.tasks)
        router.add("GET", f"{PREFIX}/runs/{{id}}/tasks/{{task_id}}", self.task)
        router.add("GET", f"{PREFIX}/runs/{{id}}/stdout", self.stdout)
        router.add("GET", f"{PREFIX}/runs/{{id}}/stderr", self.stderr)

    # -- submitting ------------------------------------------------------------------

    async def create(self, call: Call) -> Response:
        try:
            run_id = await self._create(call)
        except KreeError as e:
            raise _as_bad_request(e) from None
        return Response(200, {"run_id": run_id}, job_id=run_id)

    async def _create(self, call: Call) -> str:
        """The new run's id."""
        parts = parse_form(call.request.getHeader("content-type") or "", call.body_bytes())
        fields, attachments = self._fields(parts)
        kind = self._workflow_type(fields)
        version = fields.get("workflow_type_version")
        if version is None:
            raise InvalidRequest("workflow_type_version is required",
                                 allowed=list(kind.versions))
        if version not in kind.versions:
            raise InvalidRequest(f"{kind.name} version {version!r} is not supported here "
                                 f"(supported: {', '.join(kind.versions)})")
        self._check_engine(fields)
        params = _json_field(fields, "workflow_params")
        parameters = jobspec.check_parameters({} if params is None else params)
        tags = self._tags(_json_field(fields, "tags"))
        notes, engine_parameters = self._engine_parameters(
            _json_field(fields, "workflow_engine_parameters"))
        workflow, url = await self._workflow(call, fields.get("workflow_url"), attachments, kind)
        detail = await self._jobs.submit(
            Submission(frontend_id=call.frontend.id, workflow=workflow, user=call.user,
                       parameters=parameters, queue=True),
            guard=call.while_connected)
        job_id = detail.job.id
        request = {"workflow_params": parameters, "workflow_type": kind.name,
                   "workflow_type_version": version, "tags": tags,
                   "workflow_engine_parameters": engine_parameters, "workflow_url": url}
        for name in ("workflow_engine", "workflow_engine_version"):
            if name in fields:
                request[name] = fields[name]
        await self._jobs.add_message(job_id, json.dumps(request, separators=(",", ":")),
                                     source=REQUEST_SOURCE)
        for note in notes:
            await self._jobs.add_message(job_id, note, level="warning", source=NOTE_SOURCE)
        return job_id

    @staticmethod
    def _fields(parts: list[Part]) -> tuple[dict[str, str], dict[str, bytes]]:
        fields: dict[str, str] = {}
        attachments: dict[str, bytes] = {}
        for part in parts:
            if part.name == ATTACHMENT:
                name = check_attachment_name(part.filename)
                if name in attachments:
                    raise InvalidRequest(f"two attachments are named {name!r}")
                attachments[name] = part.data
            elif part.name in FIELDS:
                if part.name in fields:
                    raise InvalidRequest(f"form field {part.name!r} is given twice")
                fields[part.name] = part.text()
            else:
                raise InvalidRequest(f"unknown form field {part.name!r}",
                                     allowed=[*FIELDS, ATTACHMENT])
        return fields, attachments

    @staticmethod
    def _workflow_type(fields: dict[str, str]) -> WorkflowType:
        offered = workflow_types()
        name = fields.get("workflow_type")
        if name is None:
            raise InvalidRequest("workflow_type is required", allowed=sorted(offered))
        kind = offered.get(name.upper())
        if kind is None:
            raise InvalidRequest(
                f"workflow_type {name!r} is not supported here (supported: "
                f"{', '.join(t.name for t in offered.values())})")
        return kind

    @staticmethod
    def _check_engine(fields: dict[str, str]) -> None:
        engine = fields.get("workflow_engine")
        version = fields.get("workflow_engine_version")
        if version is not None and engine is None:
            raise InvalidRequest("workflow_engine_version needs workflow_engine")
        if engine is not None and engine.lower() != ENGINE:
            raise InvalidRequest(f"workflow_engine {engine!r} is not offered here "
                                 f"(offered: {ENGINE})")
        if version is not None and version != __version__:
            raise InvalidRequest(f"workflow_engine_version {version!r} is not offered here "
                                 f"(offered: {__version__})")

    @staticmethod
    def _tags(value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise InvalidRequest("tags must be a JSON object of strings")
        return value

    @staticmethod
    def _engine_parameters(value: Any) -> tuple[list[str], dict[str, str]]:
        """(notes for the run log, the parameters kept); unknown names and nulls are ignored."""
        if value is None:
            return [], {}
        if not isinstance(value, dict):
            raise InvalidRequest("workflow_engine_parameters must be a JSON object")
        notes = []
        kept = {}
        for name, setting in value.items():
            if setting is None:
                notes.append(f"workflow_engine_parameters: {name!r} is null, ignored")
            elif name not in ENGINE_PARAMETERS:
                notes.append(f"workflow_engine_parameters: {name!r} is not a parameter of "
                             f"{ENGINE} {__version__}, ignored")
            else:
                kept[name] = setting
        return notes, kept

    async def _workflow(self, call: Call, url: str | None, attachments: dict[str, bytes],
                        kind: WorkflowType) -> tuple[str, str]:
        """(the workflow as the job names it, workflow_url as the run request shows it)."""
        if url is not None and urlsplit(url).scheme:
            if attachments:
                raise InvalidRequest(
                    f"{kind.name} runs take no attachments besides the workflow; "
                    f"{url} is absolute, so {', '.join(sorted(attachments))} would be unused")
            return jobspec.check_uri(url, schemes=self._schemes, field="workflow_url"), url
        if url is None:
            if len(attachments) != 1:
                raise InvalidRequest("workflow_url is required unless exactly one "
                                     f"workflow_attachment is sent ({len(attachments)} were)")
            (url,) = attachments
        else:
            url = check_attachment_name(url)
            if url not in attachments:
                raise InvalidRequest(f"workflow_url {url!r} names no attachment",
                                     attachments=sorted(attachments))
        extra = sorted(set(attachments) - {url})
        if extra:
            # A MoML workflow names no other files (its inputs are URIs).
            raise InvalidRequest(f"{kind.name} runs take no attachments besides the "
                                 f"workflow: {', '.join(extra)}")
        upload = await self._jobs.upload_workflow(call.frontend.id, attachments[url],
                                                  kind=kind.kind)
        return upload.uri, url

    # -- reading ---------------------------------------------------------------------

    async def list(self, call: Call) -> dict[str, Any]:
        limit = call.query_int("page_size", DEFAULT_PAGE, 1, MAX_PAGE)
        token = call.query("page_token")
        after = decode_token(token) if token else None
        jobs, following = await self._jobs.list(call.frontend.id, user=call.user, after=after,
                                                limit=limit)
        runs = []
        for job in jobs:
            request = await self._request(job)
            summary = {"run_id": job.id, "state": wes_state(job),
                       "tags": request.get("tags") or {}}
            summary.update(self._times(job))
            runs.append(summary)
        return {"runs": runs, "next_page_token": encode_token(following) if following else ""}

    async def get(self, call: Call) -> dict[str, Any]:
        detail = await self._jobs.detail(call.params["id"], frontend_id=call.frontend.id)
        job = detail.job
        results = await self._jobs.results(job.id, frontend_id=call.frontend.id)
        request = await self._request(job, detail)
        base = self._base(call) + f"/runs/{job.id}"
        notes = [m.text for m in await self._messages(job.id) if m.source == NOTE_SOURCE]
        run_log = {
            "name": PurePosixPath(urlsplit(request["workflow_url"]).path).name or job.id,
            # Every job is MoML until job records name their engine kind.
            "cmd": MOML.run_command(job.job_dir),
            "stdout": f"{base}/stdout",
            "stderr": f"{base}/stderr",
            "system_logs": [*notes, *([job.error] if job.error else [])],
            **self._times(job),
        }
        if job.exit_code is not None:
            run_log["exit_code"] = job.exit_code
        v1 = self._root(call) + f"/v1/jobs/{job.id}/products"
        return {
            "run_id": job.id,
            "request": request,
            "state": wes_state(job),
            "run_log": run_log,
            "task_logs_url": f"{base}/tasks",
            "outputs": {p.name: {"location": f"{v1}/{p.name}", "size": p.size,
                                 "media_type": p.media_type} for p in results.products},
        }

    async def status(self, call: Call) -> dict[str, Any]:
        job = await self._jobs.get(call.params["id"], frontend_id=call.frontend.id)
        return {"run_id": job.id, "state": wes_state(job)}

    async def cancel(self, call: Call) -> dict[str, Any]:
        job = await self._jobs.get(call.params["id"], frontend_id=call.frontend.id)
        job = await self._jobs.apply(job.id, Action.STOP, frontend_id=call.frontend.id,
                                     reason=f"canceled through WES by {call.frontend.name}")
        return {"run_id": job.id}

    async def tasks(self, call: Call) -> dict[str, Any]:
        # The job service records no per-actor tasks yet (one per actor is
        # the goal): every run has an empty task list, so page_size and
        # page_token have nothing to page through and are not read (and
        # this operation documents no 400 to refuse them with).
        await self._jobs.get(call.params["id"], frontend_id=call.frontend.id)
        return {"task_logs": [], "next_page_token": ""}

    async def task(self, call: Call) -> dict[str, Any]:
        job = await self._jobs.get(call.params["id"], frontend_id=call.frontend.id)
        raise HttpError(404, "task_not_found",
                        f"run {job.id} has no task {call.params['task_id']!r}")

    async def stdout(self, call: Call) -> TextBody:
        return await self._log_text(call, ("info",))

    async def stderr(self, call: Call) -> TextBody:
        return await self._log_text(call, ("warning", "error"))

    async def _log_text(self, call: Call, levels: tuple[str, ...]) -> TextBody:
        """The run's messages of these levels, one per line (the engine's log as WES shows it)."""
        job = await self._jobs.get(call.params["id"], frontend_id=call.frontend.id)
        lines = [f"{isoformat(m.time)} {m.level} [{m.source}] {m.text}\n"
                 for m in await self._messages(job.id)
                 if m.level in levels and m.source != REQUEST_SOURCE]
        return TextBody("".join(lines))

    # -- helpers ---------------------------------------------------------------------

    async def _messages(self, job_id: str) -> list[Message]:
        out: list[Message] = []
        after = 0
        while True:
            page = await self._jobs.messages(job_id, after, LOG_PAGE)
            out.extend(page)
            if len(page) < LOG_PAGE:
                return out
            after = page[-1].id

    async def _request(self, job: Job, detail: JobDetail | None = None) -> dict[str, Any]:
        """The run request as the client sent it, or as the job record implies it."""
        for message in await self._jobs.messages(job.id, 0, REQUEST_SEARCH):
            if message.source == REQUEST_SOURCE:
                try:
                    return json.loads(message.text)
                except ValueError:
                    break
        if detail is None:
            detail = await self._jobs.detail(job.id)
        moml = workflow_types()["MOML"]
        return {"workflow_params": detail.parameters, "workflow_type": moml.name,
                "workflow_type_version": moml.versions[-1], "tags": {},
                "workflow_url": job.workflow_uri}

    @staticmethod
    def _times(job: Job) -> dict[str, str]:
        times = {"start_time": isoformat(job.started_at), "end_time": isoformat(job.ended_at)}
        return {name: value for name, value in times.items() if value is not None}

    @staticmethod
    def _root(call: Call) -> str:
        """https://host:port as the client named it (its Host header), for URLs it can fetch."""
        host = call.request.getHeader("host")
        if not host or "/" in host or not host.isprintable():
            return ""
        return f"https://{host}"

    def _base(self, call: Call) -> str:
        return self._root(call) + PREFIX

