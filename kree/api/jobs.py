"""
The job endpoints of API v1 (DESIGN.md section 3).

A thin dialect over the job service (kree.jobs): each handler parses the
request, calls one use case and renders its answer.  Every handler passes the
calling frontend's id down, so a job of another frontend is "not found" (404)
on every endpoint, never 403.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web import static
from twisted.web.server import NOT_DONE_YET

from kree import jobspec, outputs
from kree.errors import HttpError, InvalidRequest
from kree.events import EventWaiters
from kree.jobdir import Product
from kree.jobs import JobService, Submission
from kree.records import Job, JobDetail, Message, isoformat
from kree.states import Action, JobState
from kree.web.routing import ALREADY_WRITTEN, Call, Response, Router

DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_WAIT_SECONDS = 60
SSE_HEARTBEAT_SECONDS = 15

STATE_ACTIONS = {
    "queue": Action.QUEUE,
    "pause": Action.PAUSE,
    "resume": Action.RESUME,
    "stop": Action.STOP,
    "kill": Action.KILL,
}


def job_summary(job: Job, now: datetime.datetime) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "workflow": job.workflow_uri,
        "user": job.user,
        "created": isoformat(job.created_at),
        "ended": isoformat(job.ended_at),
        "href": f"/v1/jobs/{job.id}",
    }


def job_state(job: Job, now: datetime.datetime) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "paused_from": job.paused_from.value if job.paused_from else None,
        "created": isoformat(job.created_at),
        "queued": isoformat(job.queued_at),
        "started": isoformat(job.started_at),
        "ended": isoformat(job.ended_at),
        "running_seconds": round(job.running_time(now), 3),
        "progress": job.progress,
        "cpu_seconds": job.cpu_seconds,
        "peak_memory_bytes": job.peak_memory_bytes,
        "exit_code": job.exit_code,
        "error": job.error,
    }


def job_record(detail: JobDetail, now: datetime.datetime) -> dict[str, Any]:
    job = detail.job
    record = job_state(job, now)
    record.update(
        workflow=job.workflow_uri,
        workflow_sha256=job.workflow_sha256,
        user=job.user,
        priority=job.priority,
        resources=job.resources,
        parameters=detail.parameters,
        inputs={i.name: {"uri": i.uri, "status": i.status, "size": i.size} for i in detail.inputs},
        links={
            name: f"/v1/jobs/{job.id}/{name}"
            for name in ("state", "parameters", "messages", "events", "results", "products")
        },
    )
    return record


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "time": isoformat(message.time),
        "level": message.level,
        "source": message.source,
        "text": message.text,
    }


def product_json(job_id: str, product: Product) -> dict[str, Any]:
    return {"name": product.name, "size": product.size, "media_type": product.media_type,
            "href": product_href(job_id, product.name)}


def product_href(job_id: str, name: str) -> str:
    return f"/v1/jobs/{job_id}/products/{name}"


def outputs_json(job_id: str, value: Any) -> Any:
    """The engine's outputs, each File that names a product given its link."""
    if isinstance(value, list):
        return [outputs_json(job_id, item) for item in value]
    if not isinstance(value, dict):
        return value
    rendered = {key: outputs_json(job_id, item) for key, item in value.items()}
    product = value.get("product")
    if value.get("class") == "File" and isinstance(product, str) and (
            jobspec.INPUT_NAME.match(product) and ".." not in product):
        rendered["href"] = product_href(job_id, product)
    return rendered


class JobsApi:
    def __init__(self, jobs: JobService, waiters: EventWaiters, *,
                 allowed_hosts: list[str],
                 walltime: jobspec.WalltimeLimits = jobspec.WalltimeLimits()) -> None:
        self._walltime = walltime
        self._allowed_hosts = allowed_hosts
        self._jobs = jobs
        self._waiters = waiters

    def register(self, router: Router) -> None:
        router.add("POST", "/v1/jobs", self.create, "job.create")
        router.add("GET", "/v1/jobs", self.list)
        router.add("GET", "/v1/jobs/{id}", self.get)
        router.add("DELETE", "/v1/jobs/{id}", self.delete, "job.delete")
        router.add("GET", "/v1/jobs/{id}/state", self.state)
        router.add("GET", "/v1/jobs/{id}/parameters", self.get_parameters)
        router.add("PATCH", "/v1/jobs/{id}/parameters", self.patch_parameters, "job.parameters")
        router.add("PUT", "/v1/jobs/{id}/inputs/{name}", self.put_input, "job.input")
        router.add("PUT", "/v1/jobs/{id}/resources", self.put_resources, "job.resources")
        for name in STATE_ACTIONS:
            router.add("POST", f"/v1/jobs/{{id}}/{name}", self._action_handler(name), f"job.{name}")
        router.add("GET", "/v1/jobs/{id}/input", self.get_input)
        router.add("POST", "/v1/jobs/{id}/input", self.answer_input, "job.answer")
        router.add("GET", "/v1/jobs/{id}/messages", self.messages)
        router.add("GET", "/v1/jobs/{id}/events", self.events)
        router.add("GET", "/v1/jobs/{id}/results", self.results)
        router.add("GET", "/v1/jobs/{id}/products", self.products)
        router.add("GET", "/v1/jobs/{id}/products/{name}", self.product)

    async def _job(self, call: Call) -> Job:
        return await self._jobs.get(call.params["id"], frontend_id=call.frontend.id)

    # -- create and list ------------------------------------------------------

    async def create(self, call: Call) -> Response:
        body = call.json_object()
        unknown = sorted(set(body) - {"workflow", "parameters", "inputs", "resources", "queue"})
        if unknown:
            raise HttpError(422, "invalid_request", f"unknown fields {unknown}", unknown=unknown)
        workflow = jobspec.check_uri(body.get("workflow"))
        parameters = jobspec.check_parameters(body.get("parameters"))
        inputs = jobspec.check_inputs(body.get("inputs"))
        resources = self._check_resources(body.get("resources"))
        queue = body.get("queue", False)
        if not isinstance(queue, bool):
            raise HttpError(422, "invalid_request", "queue must be true or false")
        detail = await self._jobs.submit(
            Submission(frontend_id=call.frontend.id, workflow=workflow, user=call.user,
                       parameters=parameters, inputs=inputs, resources=resources,
                       queue=queue),
            guard=call.while_connected)
        return Response(201, job_record(detail, self._jobs.now()),
                        {"location": f"/v1/jobs/{detail.job.id}"}, job_id=detail.job.id)

    def _check_resources(self, value) -> dict[str, Any]:
        """Checked resources (a walltime at most [supervisor] max_walltime_seconds)."""
        resources = self._walltime.apply(jobspec.check_resources(value, self._jobs.backends))
        if "outputs_to" in resources:
            outputs.check_outputs_to(resources["outputs_to"], self._allowed_hosts)
        return resources

    async def list(self, call: Call) -> dict[str, Any]:
        state = call.query("state")
        if state is not None:
            try:
                state = JobState(state.upper())
            except ValueError:
                raise InvalidRequest(f"unknown state {state!r}",
                                     allowed=[s.value for s in JobState]) from None
        created_after = call.query("created_after")
        if created_after is not None:
            try:
                created_after = datetime.datetime.fromisoformat(created_after.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidRequest("created_after must be an ISO 8601 time") from None
            if created_after.tzinfo is None:
                created_after = created_after.replace(tzinfo=datetime.timezone.utc)
        limit = call.query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
        after = call.query("after")
        user = call.query("user") or call.user
        jobs, following = await self._jobs.list(call.frontend.id, state=state, user=user,
                                                created_after=created_after, after=after,
                                                limit=limit)
        now = self._jobs.now()
        return {"jobs": [job_summary(job, now) for job in jobs], "next": following}

    # -- one job -------------------------------------------------------------------

    async def get(self, call: Call) -> dict[str, Any]:
        detail = await self._jobs.detail(call.params["id"], frontend_id=call.frontend.id)
        return job_record(detail, self._jobs.now())

    async def state(self, call: Call) -> dict[str, Any]:
        return job_state(await self._job(call), self._jobs.now())

    async def delete(self, call: Call) -> Response:
        job = await self._job(call)
        await self._jobs.delete(job.id, frontend_id=call.frontend.id)
        return Response(204, None, job_id=job.id)

    async def get_parameters(self, call: Call) -> dict[str, Any]:
        detail = await self._jobs.detail(call.params["id"], frontend_id=call.frontend.id)
        job = detail.job
        checked = await self._jobs.workflow_check_of(job, guard=call.while_connected)
        declared = checked.parameters if checked else {}
        body = {"id": job.id, "parameters": detail.parameters,
                "defaults": {name: row["default"] for name, row in declared.items()}}
        # What a CWL document declares of its inputs (MoML parameters have neither).
        for field, key in (("types", "type"), ("docs", "doc")):
            found = {name: row[key] for name, row in declared.items() if key in row}
            if found:
                body[field] = found
        return body

    async def patch_parameters(self, call: Call) -> dict[str, Any]:
        job = await self._job(call)
        body = call.json_object()
        parameters = jobspec.check_parameters(body.get("parameters", body), allow_null=True)
        detail = await self._jobs.edit_new(job.id, frontend_id=call.frontend.id,
                                           parameters=parameters, guard=call.while_connected)
        return {"id": job.id, "parameters": detail.parameters}

    async def put_input(self, call: Call) -> dict[str, Any]:
        job = await self._job(call)
        name = jobspec.check_input_name(call.params["name"])
        body = call.json_object()
        uri = jobspec.check_uri(body.get("uri"), schemes=jobspec.INPUT_SCHEMES, field=f"inputs.{name}")
        detail = await self._jobs.edit_new(job.id, frontend_id=call.frontend.id,
                                           inputs={name: uri})
        staged = next(i for i in detail.inputs if i.name == name)
        return {"id": job.id, "name": name, "uri": staged.uri, "status": staged.status}

    async def put_resources(self, call: Call) -> dict[str, Any]:
        job = await self._job(call)
        resources = self._check_resources(call.json_object())
        detail = await self._jobs.edit_new(job.id, frontend_id=call.frontend.id,
                                           resources=resources)
        return {"id": job.id, "resources": detail.job.resources}

    def _action_handler(self, name: str):
        action = STATE_ACTIONS[name]

        async def handler(call: Call) -> dict[str, Any]:
            job = await self._job(call)
            body = call.json_object(required=False)
            reason = body.get("reason") if isinstance(body.get("reason"), str) else None
            job = await self._jobs.apply(
                job.id, action, reason=reason or f"{name} requested by {call.frontend.name}",
                frontend_id=call.frontend.id,
            )
            return job_state(job, self._jobs.now())

        handler.__name__ = f"job_{name}"
        return handler

    # -- interaction -----------------------------------------------------------------

    async def get_input(self, call: Call) -> dict[str, Any]:
        job = await self._job(call)
        return {"id": job.id, "prompt": await self._jobs.prompt(job)}

    async def answer_input(self, call: Call) -> dict[str, Any]:
        job = await self._job(call)  # an unknown job is 404 before a bad body is 400
        job = await self._jobs.answer(job.id, call.json_body(), frontend_id=call.frontend.id)
        return job_state(job, self._jobs.now())

    async def messages(self, call: Call) -> dict[str, Any]:
        job = await self._job(call)
        after = call.query_int("after", 0)
        limit = call.query_int("limit", 100, 1, MAX_PAGE)
        messages = await self._jobs.messages(job.id, after, limit)
        return {
            "id": job.id,
            "messages": [message_json(m) for m in messages],
            "next": messages[-1].id if messages else after,
        }

    async def events(self, call: Call) -> dict[str, Any]:
        job = await self._job(call)
        accept = (call.request.getHeader("accept") or "").lower()
        if "text/event-stream" in accept:
            return await self._event_stream(call, job)
        after = call.query_int("after", 0)
        limit = call.query_int("limit", 100, 1, MAX_PAGE)
        wait = call.query_int("wait", 0, 0, 3600)
        waiter = self._waiters.waiter(job.id) if wait else None
        events = await self._jobs.events(job.id, after, limit)
        if waiter is not None:
            if not events and await self._waiters.until(waiter, min(wait, MAX_WAIT_SECONDS)):
                events = await self._jobs.events(job.id, after, limit)
            else:
                self._waiters.forget(waiter)
        return {
            "id": job.id,
            "events": [e.to_json() for e in events],
            "next": events[-1].seq if events else after,
        }

    async def _event_stream(self, call: Call, job: Job):
        """
        Server-sent events: each event as `id: <seq>`, `event: <type>`,
        `data: <json>`, from after `Last-Event-ID` (or `after`), as they
        commit, with a comment line every 15 s to keep proxies from closing
        the stream.  It ends when the job is deleted or the client leaves.
        """
        request = call.request
        last = request.getHeader("last-event-id")
        try:
            after = int(last) if last is not None else call.query_int("after", 0)
        except ValueError:
            raise InvalidRequest("Last-Event-ID must be an event seq (an integer)") from None
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b": kree event stream\n\n")
        gone = Deferred()
        waiting: list[Deferred] = []

        def client_left(_) -> None:
            if not gone.called:
                gone.callback(None)
            for waiter in waiting:
                waiter.cancel()  # stop waiting now, not at the next heartbeat

        request.notifyFinish().addBoth(client_left)
        while not gone.called:
            waiter = self._waiters.waiter(job.id)
            waiting[:] = [waiter]
            events = await self._jobs.events(job.id, after, MAX_PAGE)
            if events:
                self._waiters.forget(waiter)
                for event in events:
                    body = json.dumps(event.to_json(), separators=(",", ":"))
                    request.write(f"id: {event.seq}\nevent: {event.type}\ndata: {body}\n\n"
                                  .encode())
                    after = event.seq
                if events[-1].type == "job.deleted":
                    break
                continue
            woken = await self._waiters.until(waiter, SSE_HEARTBEAT_SECONDS)
            if not woken and not gone.called:
                request.write(b": heartbeat\n\n")
        if not gone.called:
            request.finish()
        return ALREADY_WRITTEN

    # -- results -------------------------------------------------------------------------

    async def results(self, call: Call) -> dict[str, Any]:
        found = await self._jobs.results(call.params["id"], frontend_id=call.frontend.id)
        job = found.job
        results = {
            "id": job.id,
            "state": job.state.value,
            "complete": found.complete,
            "outputs": outputs_json(job.id, found.outputs),
            "products": [product_json(job.id, p) for p in found.products],
        }
        if found.uploads is not None:
            results["uploads"] = found.uploads
        return results

    async def products(self, call: Call) -> dict[str, Any]:
        job_id = call.params["id"]
        products = await self._jobs.products(job_id, frontend_id=call.frontend.id)
        return {"id": job_id, "products": [product_json(job_id, p) for p in products]}

    async def product(self, call: Call):
        path, media_type = await self._jobs.product(call.params["id"], call.params["name"],
                                                    frontend_id=call.frontend.id)
        # static.File does Content-Type, Content-Length, Range and HEAD, and
        # streams the file with a producer.
        resource = static.File(str(path), defaultType=media_type)
        resource.type, resource.encoding = media_type, None
        call.request.setHeader(b"cache-control", b"no-store")
        body = resource.render(call.request)
        if body is not NOT_DONE_YET:  # HEAD: headers only
            call.request.write(body)
            call.request.finish()
        return ALREADY_WRITTEN
