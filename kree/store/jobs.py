"""
Jobs, their parameters and messages.

C{transition_thd} is the heart of the store: in one transaction it locks the
job's row, asks L{kree.states.next_state} whether the action is legal, writes
the new state with its timestamps, and appends the matching C{job.state}
event.  Only the job service (L{kree.jobs}) calls it.

Lock order: every C{*_thd} here that writes anything of a job locks the
job's row first (L{kree.store.events.lock_job_thd}: SELECT ... FOR UPDATE on
PostgreSQL), before it touches the job's parameters, inputs, messages or
events, so that writers of one job queue on its row and never deadlock; see
L{kree.store.events} for why, and for transactions on several jobs.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa

from kree import states
from kree.errors import InvalidTransition, JobNotFound
from kree.records import Event, Job, JobDetail, JobInput, Message
from kree.states import Action, JobState
from kree.store import model
from kree.store.events import (append_thd, ensure_job_locked_thd, hold_new_job_thd,
                               lock_job_thd, lock_jobs_thd, utcnow)

# Fields a transition may set besides the state and its timestamps.
TRANSITION_FIELDS = frozenset(
    {"exit_code", "error", "backend", "backend_ref", "progress", "cpu_seconds",
     "peak_memory_bytes", "workflow_sha256", "events_consumed"}
)
# Fields the supervisor may update in any state (monitoring, bookkeeping).
RUNTIME_FIELDS = frozenset(
    {"exit_code", "error", "progress", "cpu_seconds", "peak_memory_bytes", "backend",
     "backend_ref", "events_consumed"}
)
ACTIVE_STATES = (JobState.RUNNING.value, JobState.WAITING.value, JobState.PAUSED.value)

RUNNING_STATES = frozenset({JobState.RUNNING, JobState.WAITING})
MAX_PAGE = 1000


def _job(row) -> Job:
    return Job(
        id=row.id,
        frontend_id=row.frontend_id,
        user=row.end_user,
        workflow_uri=row.workflow_uri,
        workflow_sha256=row.workflow_sha256,
        state=row.state,
        paused_from=row.paused_from,
        priority=row.priority,
        created_at=row.created_at,
        queued_at=row.queued_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        running_seconds=row.running_seconds,
        running_since=row.running_since,
        exit_code=row.exit_code,
        error=row.error,
        progress=row.progress,
        cpu_seconds=row.cpu_seconds,
        peak_memory_bytes=row.peak_memory_bytes,
        job_dir=row.job_dir,
        resources=row.resources,
        backend=row.backend,
        backend_ref=row.backend_ref,
        events_consumed=row.events_consumed,
        last_seq=row.last_seq,
    )


def _message(row) -> Message:
    return Message(row.id, row.job_id, row.time, row.level, row.source, row.text)


class JobsStore:
    def __init__(self, pool) -> None:
        self._pool = pool

    # -- create, read, list ---------------------------------------------

    async def create(self, **kwargs) -> tuple[Job, Event]:
        return await self._pool.run(self.create_thd, **kwargs)

    def create_thd(
        self,
        conn,
        *,
        job_id: str,
        frontend_id: int,
        workflow_uri: str,
        job_dir: str,
        backend: str | None = None,
        user: str | None = None,
        parameters: dict[str, Any] | None = None,
        inputs: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None,
        workflow_sha256: str | None = None,
        priority: int = 0,
        now: datetime.datetime | None = None,
    ) -> tuple[Job, Event]:
        """Insert a NEW job, its parameters and inputs, and its C{job.created} event."""
        now = now or utcnow()
        conn.execute(
            model.jobs.insert().values(
                id=job_id,
                frontend_id=frontend_id,
                end_user=user,
                workflow_uri=workflow_uri,
                state=JobState.NEW.value,
                priority=priority,
                created_at=now,
                job_dir=job_dir,
                backend=backend,
                resources=resources or {},
                workflow_sha256=workflow_sha256,
            )
        )
        hold_new_job_thd(conn, job_id)
        if parameters:
            self.set_parameters_thd(conn, job_id, parameters)
        for name, uri in (inputs or {}).items():
            self.set_input_thd(conn, job_id, name, uri)
        event = append_thd(
            conn,
            job_id,
            "job.created",
            {"state": JobState.NEW.value, "workflow": workflow_uri, "user": user},
            now,
        )
        return self.get_thd(conn, job_id), event

    async def get(self, job_id: str, frontend_id: int | None = None) -> Job:
        return await self._pool.run(self.get_thd, job_id, frontend_id)

    def get_thd(self, conn, job_id: str, frontend_id: int | None = None, lock=False) -> Job:
        """
        The job C{job_id}; with C{frontend_id}, only if it belongs to that
        frontend (another frontend's job is "not found", never "forbidden",
        so ids do not leak).  With C{lock}, its row is locked for the rest of
        the transaction (L{lock_job_thd}): how every write on a job begins.
        """
        if lock:
            row = lock_job_thd(conn, job_id, frontend_id)
        else:
            query = sa.select(model.jobs).where(model.jobs.c.id == job_id)
            if frontend_id is not None:
                query = query.where(model.jobs.c.frontend_id == frontend_id)
            row = conn.execute(query).one_or_none()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    async def get_detail(self, job_id: str, frontend_id: int | None = None) -> JobDetail:
        return await self._pool.run(self.get_detail_thd, job_id, frontend_id)

    def get_detail_thd(self, conn, job_id: str, frontend_id: int | None = None) -> JobDetail:
        job = self.get_thd(conn, job_id, frontend_id)
        return JobDetail(job, self.get_parameters_thd(conn, job_id), self.list_inputs_thd(conn, job_id))

    async def list(self, **kwargs) -> list[Job]:
        return await self._pool.run(self.list_thd, **kwargs)

    def list_thd(
        self,
        conn,
        *,
        frontend_id: int | None = None,
        state: JobState | None = None,
        user: str | None = None,
        created_after: datetime.datetime | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """
        Jobs, newest first.  C{after} is a cursor: the id of the last job of
        the previous page.  Keyset pagination costs the same on page 1,000
        as on page 1.
        """
        jobs = model.jobs
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
        if frontend_id is not None:
            query = query.where(jobs.c.frontend_id == frontend_id)
        if state is not None:
            query = query.where(jobs.c.state == JobState(state).value)
        if user is not None:
            query = query.where(jobs.c.end_user == user)
        if created_after is not None:
            query = query.where(jobs.c.created_at > created_after)
        if after is not None:
            query = query.where(jobs.c.id < after)
        return [_job(row) for row in conn.execute(query)]

    async def count_by_state(self, frontend_id: int | None = None) -> dict[str, int]:
        return await self._pool.run(self.count_by_state_thd, frontend_id)

    def count_by_state_thd(self, conn, frontend_id: int | None = None) -> dict[str, int]:
        """Jobs per state: every frontend's, or only C{frontend_id}'s."""
        jobs = model.jobs
        query = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
        if frontend_id is not None:
            query = query.where(jobs.c.frontend_id == frontend_id)
        return {state: count for state, count in conn.execute(query)}

    # -- state ------------------------------------------------------------

    async def transition(self, job_id: str, action: Action, **kwargs) -> tuple[Job, Event]:
        return await self._pool.run(self.transition_thd, job_id, action, **kwargs)

    def transition_thd(
        self,
        conn,
        job_id: str,
        action: Action,
        *,
        reason: str | None = None,
        frontend_id: int | None = None,
        updates: dict[str, Any] | None = None,
        now: datetime.datetime | None = None,
    ) -> tuple[Job, Event]:
        """
        Apply C{action} to the job and append its C{job.state} event, in the
        caller's transaction.

        @raise JobNotFound: no such job (for this frontend).
        @raise InvalidTransition: the action is illegal in the job's state.
        """
        now = now or utcnow()
        updates = dict(updates or {})
        unknown = set(updates) - TRANSITION_FIELDS
        if unknown:
            raise ValueError(f"a transition cannot set {sorted(unknown)}")
        job = self.get_thd(conn, job_id, frontend_id, lock=True)
        step = states.next_state(job.state, action, job.paused_from)
        values: dict[str, Any] = dict(updates)
        values["state"] = step.new.value
        values["paused_from"] = step.paused_from.value if step.paused_from else None
        if step.new is JobState.QUEUED and job.queued_at is None:
            values["queued_at"] = now
        if action is Action.DISPATCH:
            values["started_at"] = now
        was_running = job.running_since is not None
        now_running = step.new in RUNNING_STATES
        if now_running and not was_running:
            values["running_since"] = now
        elif was_running and not now_running:
            values["running_seconds"] = job.running_time(now)
            values["running_since"] = None
        if step.new.terminal:
            values["ended_at"] = now
        # Compare-and-set on top of the row lock: if anything changed the
        # state since we read it, nothing is written.
        result = conn.execute(
            model.jobs.update()
            .where(
                model.jobs.c.id == job_id,
                model.jobs.c.state == job.state.value,
            )
            .values(**values)
        )
        if result.rowcount != 1:
            current = self.get_thd(conn, job_id)
            raise InvalidTransition(current.state, action, allowed=states.allowed_actions(
                current.state, current.paused_from))
        data = {"from": step.old.value, "to": step.new.value, "action": step.action.value,
                "reason": reason}
        if step.new is JobState.PAUSED:
            data["resumes_to"] = step.paused_from.value
        event = append_thd(conn, job_id, "job.state", data, now)
        return self.get_thd(conn, job_id), event

    def lock_many_thd(self, conn, job_ids) -> set[str]:
        """
        Lock the rows of several jobs, in order of job id, before a
        transaction writes to all of them (a group commit, a round of
        monitoring): two such transactions then queue instead of locking
        shared jobs in opposite orders.  The ids of the jobs that exist.
        """
        return lock_jobs_thd(conn, job_ids)

    def update_runtime_thd(self, conn, job_id: str, **values) -> None:
        """
        Monitoring and bookkeeping fields, in any state (no event); the job's
        row locked first.  A job that is gone (deleted meanwhile) is skipped.
        """
        unknown = set(values) - RUNTIME_FIELDS
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)} outside a transition")
        if "backend_ref" in values and values["backend_ref"] is None:
            values["backend_ref"] = sa.null()  # SQL NULL, not JSON null: no engine to find
        if values and ensure_job_locked_thd(conn, job_id):
            conn.execute(model.jobs.update().where(model.jobs.c.id == job_id).values(**values))

    async def update_runtime(self, job_id: str, **values) -> None:
        await self._pool.run(self.update_runtime_thd, job_id, **values)

    # -- the supervisor's queries --------------------------------------------

    async def next_queued(self, limit: int, exclude_frontends=(), **kwargs) -> list[Job]:
        return await self._pool.run(self.next_queued_thd, limit, tuple(exclude_frontends),
                                    **kwargs)

    def next_queued_thd(self, conn, limit: int, exclude_frontends=(), *,
                        backend: str | None = None, default_backend: bool = True,
                        exclude_ids=()) -> list[Job]:
        """
        QUEUED jobs in dispatch order: higher priority first, then first queued.

        @param backend: only jobs on this backend; with C{default_backend},
            also jobs whose record names none (created before backends were
            recorded at creation).
        @param exclude_ids: jobs already handed to a backend (a Slurm job
            stays QUEUED while it is pending there).
        """
        jobs = model.jobs
        query = (sa.select(jobs).where(jobs.c.state == JobState.QUEUED.value)
                 .order_by(jobs.c.priority.desc(), jobs.c.queued_at, jobs.c.id).limit(limit))
        if exclude_frontends:
            query = query.where(jobs.c.frontend_id.not_in(exclude_frontends))
        if backend is not None:
            on = jobs.c.backend == backend
            query = query.where(sa.or_(on, jobs.c.backend.is_(None)) if default_backend else on)
        if exclude_ids:
            query = query.where(jobs.c.id.not_in(list(exclude_ids)))
        return [_job(row) for row in conn.execute(query)]

    async def submitted_ids(self, backend: str) -> list[tuple[str, str]]:
        return await self._pool.run(self.submitted_ids_thd, backend)

    def submitted_ids_thd(self, conn, backend: str) -> list[tuple[str, str]]:
        """
        (id, raw state) of QUEUED jobs on C{backend} that were handed to it
        (they have a backend reference): a batch system holds them while they
        are pending, so a restart must adopt them too.
        """
        jobs = model.jobs
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.state, jobs.c.backend_ref)
                            .where(jobs.c.state == JobState.QUEUED.value,
                                   jobs.c.backend == backend).order_by(jobs.c.id))
        return [(job_id, state) for job_id, state, ref in rows if ref]

    async def active_ids(self) -> list[tuple[str, str]]:
        return await self._pool.run(self.active_ids_thd)

    def active_ids_thd(self, conn) -> list[tuple[str, str]]:
        """(id, raw state) of jobs that may have an engine: RUNNING, WAITING, PAUSED."""
        jobs = model.jobs
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.state)
                            .where(jobs.c.state.in_(ACTIVE_STATES)).order_by(jobs.c.id))
        return [(job_id, state) for job_id, state in rows]

    async def ended_with_engine_ids(self) -> list[tuple[str, str]]:
        return await self._pool.run(self.ended_with_engine_ids_thd)

    def ended_with_engine_ids_thd(self, conn) -> list[tuple[str, str]]:
        """
        (id, raw state) of terminal jobs whose record still says how to find
        their engine (a backend reference): the engine's end was never seen,
        so it may still run (kreed stopped after a limit failed the job but
        before the engine was stopped).
        """
        jobs = model.jobs
        terminal = [state.value for state in JobState if state.terminal]
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.state, jobs.c.backend_ref)
                            .where(jobs.c.state.in_(terminal), jobs.c.backend_ref.is_not(None))
                            .order_by(jobs.c.id))
        return [(job_id, state) for job_id, state, ref in rows if ref]

    async def purgeable(self, cutoff: datetime.datetime, states) -> list[Job]:
        return await self._pool.run(self.purgeable_thd, cutoff, list(states))

    def purgeable_thd(self, conn, cutoff: datetime.datetime, states: list[str]) -> list[Job]:
        """Jobs in C{states} that ended (NEW ones: were created) before C{cutoff}."""
        jobs = model.jobs
        when = sa.func.coalesce(jobs.c.ended_at, jobs.c.created_at)
        rows = conn.execute(sa.select(jobs).where(jobs.c.state.in_(states), when < cutoff)
                            .order_by(jobs.c.id))
        return [_job(row) for row in rows]

    def lock_state_thd(self, conn, job_id: str) -> str | None:
        """
        Lock the job's row and read only its raw state (for a record that
        cannot be read as a Job); None if there is no such job.
        """
        row = lock_job_thd(conn, job_id, columns=(model.jobs.c.state,))
        return None if row is None else row.state

    def force_state_thd(self, conn, job_id: str, state: JobState, *, error: str,
                        now: datetime.datetime) -> None:
        """
        Put a locked job in C{state} (a terminal one) with C{error}, whatever
        its state was: the caller decided it (quarantine), not the table.
        """
        conn.execute(model.jobs.update().where(model.jobs.c.id == job_id).values(
            state=state.value, paused_from=None, running_since=None, ended_at=now, error=error))

    # -- messages -----------------------------------------------------------

    async def add_message(self, job_id: str, text: str, **kwargs) -> tuple[Message, Event]:
        return await self._pool.run(self.add_message_thd, job_id, text, **kwargs)

    def add_message_thd(
        self,
        conn,
        job_id: str,
        text: str,
        *,
        level: str = "info",
        source: str = "kree",
        now: datetime.datetime | None = None,
    ) -> tuple[Message, Event]:
        """
        Record a message and its C{job.message} event, the job's row locked
        first: messages of a job have ids in the order of their events, and
        a job deleted meanwhile is JobNotFound, never a foreign-key error.
        """
        now = now or utcnow()
        self.get_thd(conn, job_id, lock=True)
        message_id = conn.execute(
            model.job_messages.insert().values(
                job_id=job_id, time=now, level=level, source=source, text=text
            )
        ).inserted_primary_key[0]
        event = append_thd(
            conn,
            job_id,
            "job.message",
            {"id": message_id, "level": level, "source": source, "text": text},
            now,
        )
        return Message(message_id, job_id, now, level, source, text), event

    def last_messages_thd(self, conn, job_id: str, limit: int) -> tuple[list[Message], int]:
        """The newest C{limit} messages, oldest first, and how many there are in all."""
        msgs = model.job_messages
        rows = conn.execute(sa.select(msgs).where(msgs.c.job_id == job_id)
                            .order_by(msgs.c.id.desc()).limit(limit)).all()
        total = conn.execute(sa.select(sa.func.count()).select_from(msgs)
                             .where(msgs.c.job_id == job_id)).scalar_one()
        return [_message(row) for row in reversed(rows)], total

    def unfinished_workflow_hashes_thd(self, conn) -> set[str]:
        """Workflow versions that jobs not yet ended still need from the cache."""
        jobs = model.jobs
        rows = conn.execute(sa.select(jobs.c.workflow_sha256).where(
            jobs.c.state.not_in([s.value for s in JobState if s.terminal]),
            jobs.c.workflow_sha256.is_not(None)))
        return {sha for (sha,) in rows}

    async def list_messages(self, job_id: str, after: int = 0, limit: int = 100):
        return await self._pool.run(self.list_messages_thd, job_id, after, limit)

    def list_messages_thd(self, conn, job_id: str, after: int = 0, limit: int = 100):
        msgs = model.job_messages
        rows = conn.execute(
            sa.select(msgs)
            .where(msgs.c.job_id == job_id, msgs.c.id > after)
            .order_by(msgs.c.id)
            .limit(max(1, min(limit, MAX_PAGE)))
        )
        return [_message(row) for row in rows]

    # -- parameters -------------------------------------------------------

    async def get_parameters(self, job_id: str) -> dict[str, Any]:
        return await self._pool.run(self.get_parameters_thd, job_id)

    def get_parameters_thd(self, conn, job_id: str) -> dict[str, Any]:
        params = model.job_parameters
        rows = conn.execute(
            sa.select(params.c.name, params.c.value)
            .where(params.c.job_id == job_id)
            .order_by(params.c.name)
        )
        return {name: value for name, value in rows}

    def set_parameters_thd(self, conn, job_id: str, parameters: dict[str, Any]) -> None:
        """
        Set (insert or replace) parameters by full name; None removes one.
        The job's row is locked first (JobNotFound if there is none).
        """
        if not ensure_job_locked_thd(conn, job_id):
            raise JobNotFound(job_id)
        params = model.job_parameters
        for name, value in parameters.items():
            conn.execute(
                params.delete().where(params.c.job_id == job_id, params.c.name == name)
            )
            if value is not None:
                conn.execute(params.insert().values(job_id=job_id, name=name, value=value))

    # -- inputs -------------------------------------------------------------

    def set_input_thd(self, conn, job_id: str, name: str, uri: str) -> None:
        """Set an input's URI (pending again); the job's row locked first."""
        if not ensure_job_locked_thd(conn, job_id):
            raise JobNotFound(job_id)
        inputs = model.job_inputs
        conn.execute(inputs.delete().where(inputs.c.job_id == job_id, inputs.c.name == name))
        conn.execute(inputs.insert().values(job_id=job_id, name=name, uri=uri, status="pending"))

    def list_inputs_thd(self, conn, job_id: str) -> list[JobInput]:
        inputs = model.job_inputs
        rows = conn.execute(
            sa.select(inputs).where(inputs.c.job_id == job_id).order_by(inputs.c.name)
        )
        return [JobInput(r.name, r.uri, r.status, r.sha256, r.size, r.staged_at) for r in rows]

    async def record_staged(self, job_id: str, name: str, sha256: str, size: int) -> None:
        await self._pool.run(self.record_staged_thd, job_id, name, sha256, size)

    def record_staged_thd(self, conn, job_id: str, name: str, sha256: str, size: int,
                          now: datetime.datetime | None = None) -> None:
        """An input fetched; the job's row locked first (a job gone is skipped)."""
        if not ensure_job_locked_thd(conn, job_id):
            return
        inputs = model.job_inputs
        conn.execute(inputs.update().where(inputs.c.job_id == job_id, inputs.c.name == name)
                     .values(status="staged", sha256=sha256, size=size, staged_at=now or utcnow()))

    async def record_staging_failed(self, job_id: str, name: str) -> None:
        await self._pool.run(self.record_staging_failed_thd, job_id, name)

    def record_staging_failed_thd(self, conn, job_id: str, name: str) -> None:
        """The input could not be fetched (the job fails with the reason); the row locked first."""
        if not ensure_job_locked_thd(conn, job_id):
            return
        inputs = model.job_inputs
        conn.execute(inputs.update().where(inputs.c.job_id == job_id, inputs.c.name == name)
                     .values(status="failed"))

    # -- editing (the job service allows it only while NEW) ----------------------

    def edit_thd(
        self,
        conn,
        job_id: str,
        *,
        parameters: dict[str, Any] | None = None,
        inputs: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None,
        backend: str | None = None,
        job_dir: str | None = None,
    ) -> None:
        """
        Change parameters (merged; None removes one), inputs or resources
        (replaced, with the backend and job directory they imply), inside the
        caller's transaction, which has locked the job and checked its state.
        """
        if parameters:
            self.set_parameters_thd(conn, job_id, parameters)
        for name, uri in (inputs or {}).items():
            self.set_input_thd(conn, job_id, name, uri)
        if resources is not None:
            conn.execute(
                model.jobs.update()
                .where(model.jobs.c.id == job_id)
                .values(resources=resources, priority=resources.get("priority", 0),
                        **({"backend": backend} if backend else {}),
                        **({"job_dir": job_dir} if job_dir else {}))
            )

    # -- delete (the job service decides who may go) --------------------------

    def remove_thd(self, conn, job: Job, now: datetime.datetime | None = None) -> Event:
        """
        Delete a job's row with its parameters, inputs and messages, inside
        the caller's transaction, which has locked it and checked that it
        may go.  Its events stay (ending with C{job.deleted}) until the
        event log is purged, so listeners still get them.
        """
        event = append_thd(conn, job.id, "job.deleted", {"state": job.state.value}, now)
        conn.execute(model.jobs.delete().where(model.jobs.c.id == job.id))
        return event
