"""
The job service: the only writer of job state.

The API, the supervisor and the admin console all change jobs through
L{JobService}, and its use cases are theirs, written here once: submitting a
job (L{Submission}: the workflow fetched and checked, the job created and
queued in one transaction), uploading a workflow (L{Upload}), editing one
while NEW, deleting one (the record, then the engine, then the directory;
who may be deleted is L{kree.states.check_deletable}'s rule) and purging old
ones, and the reads (jobs, events, messages, L{Results}, products).  A dialect parses
its request into these records and renders what comes back; none of them
knows HTTP.  Each change is one store transaction that checks the state
machine (L{kree.states}), writes the job and appends its event; only after
the commit are observers told (the supervisor to act, kree.events to deliver,
long polls to wake).  An observer that fails is logged and never undoes the
change, which is already durable.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Protocol

import attrs
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kree.engines import MOML, EngineKind
from kree.errors import InvalidRequest, InvalidTransition, JobNotFound, KreeError, NotWaiting
from kree.ids import looks_like_job_id, new_job_id
from kree import jobdir, jobspec, prompts
from kree.jobdir import Product
from kree.jobspec import InvalidJobSpec
from kree.records import Event, Job, JobDetail, Message
from kree.states import (DELETABLE_STATES, QUARANTINE_STATE, Action, JobState,
                         check_deletable)
from kree.store import Store
from kree.store.events import append_thd
from kree.validation import InvalidWorkflow

EventObserver = Callable[[Event], None]
#: Told how far a purge has got: (done, total).
PurgeProgress = Callable[[int, int], None]
#: The states a purge may take: NEW and the terminal ones.
PURGEABLE = DELETABLE_STATES


#: Wraps costly work that has no use once nobody waits for it (a workflow
#: check), cancelling it when the client goes away (C{Call.while_connected}).
Guard = Callable[[Awaitable[Any]], Awaitable[Any]]


@attrs.frozen
class Submission:
    """A new job as a dialect asks for it, its fields already parsed (kree.jobspec)."""

    frontend_id: int
    workflow: str
    user: str | None = None
    parameters: dict[str, Any] = attrs.field(factory=dict)
    inputs: dict[str, str] = attrs.field(factory=dict)
    resources: dict[str, Any] = attrs.field(factory=dict)
    #: Queue it at once (in the same transaction as its creation).
    queue: bool = False


@attrs.frozen
class Results:
    """What a job produced so far: complete once it is FINISHED."""

    job: Job
    products: list[Product]
    #: Where the products went (outputs_to), once they were sent; else None.
    uploads: list[dict[str, Any]] | None
    #: The engine's outputs by name (CWL: the output object, each File naming
    #: its product); empty for MoML.
    outputs: dict[str, Any] = attrs.field(factory=dict)

    @property
    def complete(self) -> bool:
        return self.job.state is JobState.FINISHED


@attrs.frozen
class Upload:
    """A workflow document a frontend uploaded, as it is known from now on."""

    uri: str
    sha256: str
    size: int
    #: The first time this frontend uploaded these bytes.
    first: bool


class WorkflowSource(Protocol):
    """Where workflows come from (kree.fetch.Fetcher)."""

    async def fetch(self, uri: str) -> Any: ...

    def cache_path(self, sha256: str) -> Path: ...

    async def keep_upload(self, data: bytes,
                          check: Callable[[bytes], None]) -> tuple[str, str]: ...


class ResourceRules(Protocol):
    """What a job may ask of the sandbox (kree.sandbox.Sandbox)."""

    def check_resources(self, resources: dict[str, Any], frontend: str) -> None:
        """@raise InvalidJobSpec: 422 naming the resource."""


class WorkflowCheck(Protocol):
    """The engine's check of a workflow (kree.validation.WorkflowChecker)."""

    async def check(self, path: Path, sha256: str, policy: dict[str, str]) -> Any: ...


@attrs.frozen
class ParameterLocks:
    """
    The actor attributes frontends may not set ([parameters] locked): per
    actor class, the admin's list where there is one, else the attributes
    the engine says hold code the actor runs.
    """

    by_class: dict[str, tuple[str, ...]] = attrs.field(factory=dict)

    @classmethod
    def from_config(cls, settings) -> "ParameterLocks":
        return cls({name: tuple(attributes) for name, attributes in settings.locked.items()})

    def locked(self, info: dict[str, Any]) -> bool:
        actor_class = info.get("actor_class")
        if actor_class is None:
            return False
        if actor_class in self.by_class:
            return info.get("attribute") in self.by_class[actor_class]
        return bool(info.get("code"))


def check_parameter_names(checked, parameters: dict[str, Any],
                          locks: ParameterLocks | None = ParameterLocks()) -> None:
    """
    @raise InvalidJobSpec: C{invalid_parameter}, a name the checked workflow
        does not have or a value that does not fit the type its (CWL) input
        declares, or C{parameter_locked}, one that holds code frontends may
        not set (422, naming them).
    """
    unknown = sorted(name for name in parameters if name not in checked.parameters)
    if unknown:
        raise InvalidJobSpec("invalid_parameter",
                             f"the workflow has no parameter {', '.join(unknown)}",
                             unknown=unknown)
    for name, value in parameters.items():
        declared = checked.parameters[name].get("type")
        if declared is not None and not _fits_cwl_type(declared, value):
            raise InvalidJobSpec(
                "invalid_parameter",
                f"parameter {name}: the input is of type {declared}, not "
                f"{_json_type(value)}" + (" (File and Directory inputs are given as inputs, "
                                          "by URI)" if declared.rstrip("?") in (
                                              "File", "Directory") else ""),
                parameter=name, type=declared)
    if locks is None:
        return
    locked = sorted(name for name in parameters if locks.locked(checked.parameters[name]))
    if locked:
        classes = sorted({checked.parameters[name]["actor_class"] for name in locked})
        raise InvalidJobSpec(
            "parameter_locked",
            f"{', '.join(locked)}: holds code the actor runs ({', '.join(classes)}), which "
            "frontends may not set on this server ([parameters] locked)", locked=locked)


def _fits_cwl_type(declared: str, value: Any) -> bool:
    """
    Whether C{value} (a parameter's JSON) fits a CWL input's type as
    kree.cwl writes it (C{string}, C{int?}, C{float[]}, C{enum(a, b)},
    C{int | string}); what cannot be judged here (records, nested unions,
    named schema types) is left to cwltool.
    """
    declared = declared.strip()
    if "(" in declared and not declared.startswith("enum("):
        return True
    if " | " in declared:
        return any(_fits_cwl_type(part, value) for part in declared.split(" | "))
    if declared.endswith("?"):
        return value is None or _fits_cwl_type(declared[:-1], value)
    if declared.endswith("[]"):
        return isinstance(value, list) and all(_fits_cwl_type(declared[:-2], v) for v in value)
    if declared.startswith("enum("):
        return isinstance(value, str) and value in [
            symbol.strip() for symbol in declared[5:-1].split(",")]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "string": isinstance(value, str),
        "int": number and isinstance(value, int),
        "long": number and isinstance(value, int),
        "float": number,
        "double": number,
        "boolean": isinstance(value, bool),
        "null": value is None,
        "File": False,
        "Directory": False,
    }.get(declared, True)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__


def _job_id(job_id: str) -> str:
    """C{job_id}, if it has a job id's shape: anything else is no job (404), unasked."""
    if not looks_like_job_id(job_id):
        raise JobNotFound(job_id)
    return job_id


class Engines(Protocol):
    """What runs engines (the supervisor), as the use cases need it."""

    async def release(self, job: Job) -> None:
        """Returns once the job's engine is gone (before its directory is removed)."""

    async def answer(self, job: Job, n: int, answers: dict[str, Any], *,
                     frontend_id: int | None) -> Job:
        """Deliver answers to the waiting engine; the job is RUNNING again."""


class JobService:
    log = Logger()

    def __init__(self, store: Store, reactor, jobs_dir: Path, *,
                 job_roots: dict[str, Path] | None = None,
                 default_backend: str = "local",
                 workflows: WorkflowSource | None = None,
                 checker: WorkflowCheck | None = None,
                 sandbox: ResourceRules | None = None,
                 locks: ParameterLocks = ParameterLocks()) -> None:
        """
        @param jobs_dir: where job directories go.
        @param workflows: fetches workflows, for L{submit}.
        @param checker: checks them, for L{submit} and L{workflow_check_of}.
        @param sandbox: judges the resources a job asks of the sandbox
            (network, limits), for L{submit} and L{edit_new}.
        @param locks: the actor attributes frontends may not set.
        @param job_roots: per backend, where its jobs' directories go instead
            (a Slurm job's must be on a file system the compute nodes share);
            its keys are the backends this server offers (default: local).
        """
        self._store = store
        self._reactor = reactor
        self._job_roots = {name: Path(root) for name, root in
                           (job_roots or {"local": Path(jobs_dir)}).items()}
        self._default_backend = default_backend
        self._observers: list[EventObserver] = []
        self._engines: Engines | None = None
        self._workflows = workflows
        self._checker = checker
        self._sandbox = sandbox
        self._locks = locks

    def attach_engines(self, engines: Engines) -> None:
        """The supervisor, built after this service: it releases and answers engines."""
        self._engines = engines

    # -- reads ----------------------------------------------------------------------

    async def get(self, job_id: str, *, frontend_id: int | None = None) -> Job:
        """
        A job (of this frontend, if given).

        @raise JobNotFound: no such job, or not this frontend's, or not even
            a job id's shape.
        """
        return await self._store.jobs.get(_job_id(job_id), frontend_id)

    async def detail(self, job_id: str, *, frontend_id: int | None = None) -> JobDetail:
        """A job with its parameters and inputs."""
        return await self._store.jobs.get_detail(_job_id(job_id), frontend_id)

    async def list(self, frontend_id: int, *, state=None, user: str | None = None,
                   created_after: datetime.datetime | None = None, after: str | None = None,
                   limit: int) -> tuple[list[Job], str | None]:
        """A page of a frontend's jobs, newest first, and the cursor of the next (or None)."""
        jobs = await self._store.jobs.list(frontend_id=frontend_id, state=state, user=user,
                                           created_after=created_after, after=after,
                                           limit=limit + 1)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (jobs[-1].id if more else None)

    async def count_by_state(self, frontend_id: int) -> dict[JobState, int]:
        """
        How many of a frontend's jobs are in each state (states with none
        left out, and so is a state no KREE writes, on a record awaiting quarantine).
        """
        counts = await self._store.jobs.count_by_state(frontend_id)
        known = {state.value for state in JobState}
        return {JobState(state): count for state, count in counts.items() if state in known}

    async def events(self, job_id: str, after: int, limit: int) -> list[Event]:
        """A job's events after seq C{after}, at most C{limit}."""
        return await self._store.events.list_for_job(job_id, after, limit)

    async def messages(self, job_id: str, after: int, limit: int) -> list[Message]:
        """A job's messages after id C{after}, at most C{limit}."""
        return await self._store.jobs.list_messages(job_id, after, limit)

    # -- prompts ----------------------------------------------------------------------

    def _in_thread(self, fn, *args):
        """File-system work (job directories) off the reactor."""
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    async def products(self, job_id: str, *, frontend_id: int | None = None) -> list[Product]:
        """The files the job's engine left in products/."""
        job = await self.get(job_id, frontend_id=frontend_id)
        return await self._in_thread(jobdir.products, Path(job.job_dir))

    async def product(self, job_id: str, name: str, *,
                      frontend_id: int | None = None) -> tuple[Path, str]:
        """
        (the file, its media type) of one product.

        @raise kree.jobdir.ProductNotFound: no such product (404).
        """
        job = await self.get(job_id, frontend_id=frontend_id)
        path = await self._in_thread(jobdir.product_path, Path(job.job_dir), name)
        return path, jobdir.media_type_of(name)

    async def results(self, job_id: str, *, frontend_id: int | None = None) -> Results:
        job = await self.get(job_id, frontend_id=frontend_id)
        products = await self._in_thread(jobdir.products, Path(job.job_dir))
        uploads = await self._in_thread(jobdir.read_uploads, Path(job.job_dir))
        outputs = await self._in_thread(jobdir.read_outputs, Path(job.job_dir))
        return Results(job=job, products=products, uploads=uploads, outputs=outputs)

    async def prompt(self, job: Job) -> dict[str, Any]:
        """
        What a WAITING job asks (its last C{job.waiting} event's data: the
        prompt and its number C{n}).

        @raise NotWaiting: the job is not WAITING, or its prompt is not recorded.
        """
        if job.state is not JobState.WAITING:
            raise NotWaiting(f"job is {job.state}, not WAITING for input",
                             state=job.state.value)
        events = await self._store.events.list_for_job(job.id, max(0, job.last_seq - 200), 200)
        asked = [e for e in events if e.type == "job.waiting"]
        if not asked:
            raise NotWaiting("job is WAITING but its prompt is not recorded",
                             state=job.state.value)
        return asked[-1].data

    async def answer(self, job_id: str, body: Any, *, frontend_id: int | None = None) -> Job:
        """
        Answer a WAITING job's prompt with C{body} (checked against the
        prompt's fields, L{kree.prompts.check_answer}); the job is RUNNING again.

        @raise NotWaiting: it is not waiting.
        @raise kree.prompts.InvalidAnswer: the answers do not fit the prompt (422).
        """
        job = await self.get(job_id, frontend_id=frontend_id)
        waiting = await self.prompt(job)
        answers = prompts.check_answer(waiting.get("prompt"), body)
        return await self._engines.answer(job, waiting.get("n"), answers,
                                          frontend_id=frontend_id)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self._job_roots)

    def placement(self, job_id: str, resources: dict[str, Any] | None) -> tuple[str, str]:
        """
        The backend a job runs on (resources.backend, else the default) and
        its directory there.

        @raise InvalidJobSpec: that backend is not offered here (422).
        """
        backend = (resources or {}).get("backend", self._default_backend)
        root = self._job_roots.get(backend)
        if root is None:
            raise InvalidJobSpec(
                "invalid_resources",
                f"backend {backend!r} is not enabled on this server "
                f"(offered: {', '.join(self._job_roots)})", field="backend")
        return backend, str(root / job_id)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.timezone.utc)

    def add_observer(self, observer: EventObserver) -> None:
        """Call C{observer(event)} after each committed event."""
        self._observers.append(observer)

    def remove_observer(self, observer: EventObserver) -> None:
        self._observers.remove(observer)

    def _notify(self, event: Event) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:
                self.log.failure(
                    "event observer {observer!r} failed on {event_type} of job {job_id}",
                    observer=observer,
                    event_type=event.type,
                    job_id=event.job_id,
                )

    async def create(
        self,
        frontend_id: int,
        workflow_uri: str,
        *,
        user: str | None = None,
        parameters: dict[str, Any] | None = None,
        inputs: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None,
        priority: int = 0,
        workflow_sha256: str | None = None,
    ) -> Job:
        """Create a job in state NEW; its directory is made at dispatch."""
        job_id = new_job_id(self._reactor.seconds())
        backend, job_dir = self.placement(job_id, resources)
        job, event = await self._store.jobs.create(
            job_id=job_id,
            frontend_id=frontend_id,
            workflow_uri=workflow_uri,
            backend=backend,
            job_dir=job_dir,
            user=user,
            parameters=parameters,
            inputs=inputs,
            resources=resources,
            priority=priority,
            workflow_sha256=workflow_sha256,
            now=self.now(),
        )
        self.log.info(
            "job {job_id} created by frontend {frontend} for {workflow}",
            job_id=job.id,
            frontend=frontend_id,
            workflow=workflow_uri,
        )
        self._notify(event)
        return job

    async def submit(self, submission: Submission, *, guard: Guard | None = None) -> JobDetail:
        """
        A new job: its workflow fetched (a conditional request when cached)
        and checked by the engine, with its parameter names, so a frontend
        hears about a bad workflow at once; then the job created, and queued
        if asked, in one transaction.

        @param guard: wraps the check (see L{Guard}).
        @raise InvalidJobSpec: C{workflow_not_found} (an upload the frontend
            did not make, or one purged from the cache), C{invalid_parameter}.
        @raise kree.fetch.FetchError: the workflow cannot be fetched.
        @raise kree.validation.InvalidWorkflow: the workflow cannot run.
        """
        workflow = submission.workflow
        await self._check_sandbox(submission.frontend_id, submission.resources)
        fetched, checked = await self.fetch_and_check(submission.frontend_id, workflow,
                                                      guard=guard)
        check_parameter_names(checked, submission.parameters, self._locks)
        job_id = new_job_id(self._reactor.seconds())
        backend, job_dir = self.placement(job_id, submission.resources)
        detail, events = await self._store.pool.run(
            self._submit_thd, submission, job_id, backend, job_dir, fetched.sha256, self.now())
        self.log.info("job {job_id} created by frontend {frontend} for {workflow}{queued}",
                      job_id=job_id, frontend=submission.frontend_id, workflow=workflow,
                      queued=", and queued" if submission.queue else "")
        for event in events:
            self._notify(event)
        return detail

    def _submit_thd(self, conn, submission, job_id, backend, job_dir, sha256, now):
        jobs = self._store.jobs
        job, created = jobs.create_thd(
            conn, job_id=job_id, frontend_id=submission.frontend_id,
            workflow_uri=submission.workflow, backend=backend, job_dir=job_dir,
            user=submission.user, parameters=submission.parameters, inputs=submission.inputs,
            resources=submission.resources, priority=submission.resources.get("priority", 0),
            workflow_sha256=sha256, now=now)
        events = [created]
        if submission.queue:
            _, queued = jobs.transition_thd(conn, job_id, Action.QUEUE,
                                            reason="queued at creation", now=now)
            events.append(queued)
        return jobs.get_detail_thd(conn, job_id), events

    async def _check_sandbox(self, frontend_id: int, resources: dict[str, Any]) -> None:
        """@raise InvalidJobSpec: the sandbox refuses what the resources ask (422)."""
        if self._sandbox is None:
            return
        frontend = await self._store.frontends.by_id(frontend_id)
        self._sandbox.check_resources(resources, frontend.name if frontend else "")

    async def fetch_and_check(self, frontend_id: int, workflow: str, *,
                              guard: Guard | None = None):
        """
        A workflow as a frontend may use it: (the fetch result, the engine's
        check).  An uploaded one (C{kree:workflow/...}) must be the frontend's
        own upload, so that nobody learns of another frontend's documents.

        @raise InvalidJobSpec: C{workflow_not_found}.
        @raise kree.fetch.FetchError: it cannot be fetched.
        @raise kree.validation.InvalidWorkflow: it cannot run.
        """
        uploaded = jobspec.uploaded_workflow_sha256(workflow)
        if uploaded is not None and (
                not await self._store.ownership.uploaded(frontend_id, uploaded)
                or await self._store.cache.get(workflow) is None):
            raise InvalidJobSpec("workflow_not_found",
                                 f"no uploaded workflow {workflow}: upload it with "
                                 "POST /v1/workflows", workflow=workflow)
        fetched = await self._workflows.fetch(workflow)
        return fetched, await self.check_workflow(fetched.path, fetched.sha256, guard=guard)

    async def upload_workflow(self, frontend_id: int, data: bytes, *,
                              kind: EngineKind = MOML) -> Upload:
        """
        Keep a document a frontend uploads, once by its hash, and record
        that this frontend may name it (C{kree:workflow/<sha256>}); what
        others uploaded is never revealed.

        @raise kree.engines.InvalidDocument: not a document of C{kind}.
        """
        if not data:
            raise InvalidRequest("the workflow document is empty")
        uri, sha256 = await self._workflows.keep_upload(data, kind.check_upload)
        first = await self._store.ownership.record_upload(frontend_id, sha256)
        return Upload(uri, sha256, len(data), first)

    async def check_workflow(self, path: Path, sha256: str, *, guard: Guard | None = None):
        """
        The engine's check of a workflow under the admin's actor policy.

        @raise kree.validation.InvalidWorkflow: it cannot run (its problems in
            C{details.problems}).
        """
        policy = await self._store.policies.all()
        work = self._checker.check(path, sha256, policy)
        checked = await (guard(work) if guard is not None else work)
        if not checked.valid:
            raise InvalidWorkflow("the workflow cannot run: " + "; ".join(checked.problems[:10]),
                                  problems=checked.problems)
        return checked

    async def workflow_check_of(self, job: Job, *, guard: Guard | None = None):
        """The check of the workflow version a job was created with (cached); None if unknown."""
        if job.workflow_sha256 is None:
            return None
        return await self.check_workflow(self._workflows.cache_path(job.workflow_sha256),
                                         job.workflow_sha256, guard=guard)

    async def edit_new(
        self,
        job_id: str,
        *,
        frontend_id: int | None = None,
        parameters: dict[str, Any] | None = None,
        inputs: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None,
        guard: Guard | None = None,
    ) -> JobDetail:
        """
        Change a NEW job's parameters (merged; None removes one; each named
        one must be the workflow's and not locked, see L{check_parameter_names}), inputs
        (each named one replaced) or resources (replaced, with the backend and
        directory they imply), in one transaction with a C{job.updated} event
        whose data says what changed.  Give exactly one of the three.

        @raise InvalidTransition: the job is no longer NEW (409).
        @raise JobNotFound: no such job (of this frontend, if given).
        """
        given = {name: value for name, value in (("parameters", parameters), ("inputs", inputs),
                                                 ("resources", resources)) if value is not None}
        if len(given) != 1:
            raise ValueError(f"edit_new changes one of parameters, inputs, resources: {given}")
        ((what, change),) = given.items()
        if parameters is not None:
            job = await self.get(job_id, frontend_id=frontend_id)
            checked = await self.workflow_check_of(job, guard=guard)
            if checked is not None:
                check_parameter_names(checked, {name: value for name, value in parameters.items()
                                                if value is not None}, self._locks)
        if resources is not None and frontend_id is not None:
            await self._check_sandbox(frontend_id, resources)
        placement = self.placement(job_id, resources) if resources is not None else (None, None)
        detail, event = await self._store.pool.run(
            self._edit_new_thd, job_id, frontend_id, what, change, placement, self.now())
        self.log.info("job {job_id}: {what} changed", job_id=job_id, what=what)
        self._notify(event)
        return detail

    def _edit_new_thd(self, conn, job_id, frontend_id, what, change, placement, now):
        jobs = self._store.jobs
        job = jobs.get_thd(conn, job_id, frontend_id, lock=True)
        if job.state is not JobState.NEW:
            raise InvalidTransition(job.state, f"set {what}",
                                    f"cannot set {what} of a job in state {job.state}: "
                                    "only while NEW")
        backend, job_dir = placement
        jobs.edit_thd(conn, job_id, **{what: change}, backend=backend, job_dir=job_dir)
        event = append_thd(conn, job_id, "job.updated", {what: change}, now)
        return jobs.get_detail_thd(conn, job_id), event

    async def apply(
        self,
        job_id: str,
        action: Action,
        *,
        reason: str | None = None,
        frontend_id: int | None = None,
        updates: dict[str, Any] | None = None,
    ) -> Job:
        """
        Apply a state-machine action.

        @param frontend_id: when given, the job must belong to this frontend.
        @raise kree.errors.JobNotFound: no such job (for this frontend).
        @raise kree.errors.InvalidTransition: illegal in the job's state.
        """
        job, event = await self._store.jobs.transition(
            job_id,
            Action(action),
            reason=reason,
            frontend_id=frontend_id,
            updates=updates,
            now=self.now(),
        )
        self.log.info(
            "job {job_id} {old} -> {new} ({action}{because})",
            job_id=job_id,
            old=event.data["from"],
            new=event.data["to"],
            action=str(action),
            because=f": {reason}" if reason else "",
        )
        self._notify(event)
        return job

    async def add_message(
        self, job_id: str, text: str, *, level: str = "info", source: str = "kree"
    ) -> Message:
        message, event = await self._store.jobs.add_message(
            job_id, text, level=level, source=source, now=self.now()
        )
        self._notify(event)
        return message

    async def apply_engine_events(self, job_id: str, lines: list[dict[str, Any]],
                                  consumed: int) -> Job:
        """
        Apply what the engine reported (lines of its events.jsonl, see
        DESIGN.md section 5) in one transaction, together with the count of
        lines consumed, so that after a restart no line is applied twice or
        skipped.  An engine event that the job's state no longer allows (an
        engine finishing a job that was already stopped) is recorded as
        consumed and otherwise ignored.
        """
        events, job = await self._store.pool.run(
            self._engine_events_thd, job_id, lines, consumed, self.now())
        self._announce_engine_events(job_id, events)
        return job

    async def apply_engine_events_many(
            self, batches: list[tuple[str, list[dict[str, Any]], int]]) -> list[Job | JobNotFound]:
        """
        L{apply_engine_events} for several jobs in one transaction (a group
        commit: with many engines writing, one commit instead of one each).
        Per batch, in order: the job afterwards, or the JobNotFound of a job
        deleted meanwhile (which changes nothing).
        """
        results = await self._store.pool.run(self._engine_events_many_thd, batches, self.now())
        out: list[Job | JobNotFound] = []
        for (job_id, _, _), result in zip(batches, results):
            if isinstance(result, JobNotFound):
                out.append(result)
                continue
            events, job = result
            self._announce_engine_events(job_id, events)
            out.append(job)
        return out

    def _engine_events_many_thd(self, conn, batches, now):
        # Every job of the group locked in id order first: two group commits
        # (or one and a round of monitoring) then never lock in opposite orders.
        self._store.jobs.lock_many_thd(conn, [job_id for job_id, _, _ in batches])
        results = []
        for job_id, lines, consumed in batches:
            try:
                results.append(self._engine_events_thd(conn, job_id, lines, consumed, now))
            except JobNotFound as e:  # raised before it changed anything
                results.append(e)
        return results

    def _announce_engine_events(self, job_id: str, events: list[Event]) -> None:
        for event in events:
            if event.type == "job.state":
                self.log.info("job {job_id} {old} -> {new} ({reason})", job_id=job_id,
                              old=event.data["from"], new=event.data["to"],
                              reason=event.data.get("reason"))
            self._notify(event)

    def _engine_events_thd(self, conn, job_id, lines, consumed, now):
        jobs = self._store.jobs
        out: list[Event] = []
        # Read first: a deleted job raises JobNotFound before anything changes.
        if jobs.get_thd(conn, job_id).events_consumed >= consumed and lines:
            # Applied already: a retry after a commit whose outcome was lost.
            return out, jobs.get_thd(conn, job_id)

        def transition(action, reason, updates=None) -> None:
            try:
                out.append(jobs.transition_thd(conn, job_id, action, reason=reason,
                                               updates=updates, now=now)[1])
            except InvalidTransition:
                # The job ended already (stopped, killed, over a limit): its
                # reason stands; only the engine's exit code is added.
                if updates and "exit_code" in updates:
                    jobs.update_runtime_thd(conn, job_id, exit_code=updates["exit_code"])

        for line in lines:
            kind = line.get("type")
            if kind == "message":
                level = line.get("level") if line.get("level") in ("info", "warning",
                                                                    "error") else "info"
                out.append(jobs.add_message_thd(
                    conn, job_id, str(line.get("text", "")), level=level,
                    source=str(line.get("actor") or "engine"), now=now)[1])
            elif kind == "progress":
                try:
                    fraction = min(1.0, max(0.0, float(line.get("fraction"))))
                except (TypeError, ValueError):
                    continue
                jobs.update_runtime_thd(conn, job_id, progress=fraction)
                out.append(append_thd(conn, job_id, "job.progress", {"fraction": fraction}, now))
            elif kind == "waiting":
                transition(Action.ASK_INPUT, "waiting for input")
                out.append(append_thd(conn, job_id, "job.waiting", {
                    "n": line.get("n"), "actor": line.get("actor"),
                    "prompt": line.get("prompt")}, now))
            elif kind == "product":
                out.append(append_thd(conn, job_id, "job.product", {
                    key: line.get(key) for key in ("name", "size", "media_type", "actor")}, now))
            elif kind == "error":
                jobs.update_runtime_thd(conn, job_id, error=str(line.get("message"))[:10_000])
            elif kind == "end":
                code = line.get("exit_code")
                code = code if isinstance(code, int) and not isinstance(code, bool) else None
                if code == 0:
                    transition(Action.FINISH, "finished", {"exit_code": 0, "progress": 1.0})
                else:
                    reason = str(line.get("error") or f"engine exited with code {code}")[:10_000]
                    transition(Action.FAIL, reason, {"exit_code": code, "error": reason})
        jobs.update_runtime_thd(conn, job_id, events_consumed=consumed)
        return out, jobs.get_thd(conn, job_id)

    async def quarantine(self, job_id: str, reason: str) -> None:
        """Fail a job whose record cannot be understood (never crash on it)."""
        event = await self._store.pool.run(self._quarantine_thd, job_id, reason, self.now())
        self.log.error("job {job_id} quarantined: {reason}", job_id=job_id, reason=reason)
        self._notify(event)

    def _quarantine_thd(self, conn, job_id: str, reason: str, now) -> Event:
        """Only the state is read (the rest is what failed to read), the row locked first."""
        old = self._store.jobs.lock_state_thd(conn, job_id)
        if old is None:
            raise JobNotFound(job_id)
        why = f"quarantined: {reason}"
        self._store.jobs.force_state_thd(conn, job_id, QUARANTINE_STATE, error=why, now=now)
        return append_thd(conn, job_id, "job.state",
                          {"from": str(old), "to": QUARANTINE_STATE.value,
                           "action": Action.FAIL.value, "reason": why}, now)

    async def delete(self, job_id: str, *, frontend_id: int | None = None) -> Job:
        """
        Delete a NEW or terminal job: its record, with a C{job.deleted}
        event, in one transaction; then, once its engine is gone (a stopped
        engine may still be finishing its firing), its directory.

        @raise JobNotFound: no such job (of this frontend, if given).
        @raise InvalidTransition: the job is neither NEW nor ended (409).
        """
        job, event = await self._store.pool.run(self._delete_thd, job_id, frontend_id,
                                                self.now())
        self.log.info("job {job_id} deleted", job_id=job_id)
        self._notify(event)
        if self._engines is not None:
            await self._engines.release(job)
        await self._in_thread(shutil.rmtree, job.job_dir, True)
        return job

    def _delete_thd(self, conn, job_id: str, frontend_id: int | None, now) -> tuple[Job, Event]:
        job = self._store.jobs.get_thd(conn, job_id, frontend_id, lock=True)
        check_deletable(job.state)
        return job, self._store.jobs.remove_thd(conn, job, now)

    async def purge(self, older_than_seconds: float, states: Iterable[JobState],
                    progress: PurgeProgress | None = None) -> int:
        """
        Delete (as L{delete}) every job in C{states} that ended, or for NEW
        ones was created, more than C{older_than_seconds} ago; the number
        deleted.  A job that changed meanwhile is left alone.

        @raise InvalidRequest: a state that is neither NEW nor terminal.
        """
        states = set(states)
        if not states <= PURGEABLE:
            others = ", ".join(sorted(state.value for state in states - PURGEABLE))
            raise InvalidRequest(f"only NEW and terminal jobs can be purged, not {others}")
        cutoff = self.now() - datetime.timedelta(seconds=older_than_seconds)
        candidates = await self._store.jobs.purgeable(cutoff, [state.value for state in states])
        report = progress or (lambda done, total: None)
        report(0, len(candidates))
        purged = 0
        for index, job in enumerate(candidates, 1):
            try:
                await self.delete(job.id)
            except KreeError:
                pass  # it changed (was queued, or deleted) meanwhile
            else:
                purged += 1
            if index % 50 == 0 or index == len(candidates):
                report(index, len(candidates))
        return purged
