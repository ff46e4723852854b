"""
The records the store hands out: typed, frozen, free of SQLAlchemy.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from kree.states import JobState


def isoformat(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@attrs.frozen
class Frontend:
    id: int
    name: str
    fingerprint: str
    subject: str
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@attrs.frozen
class Job:
    id: str
    frontend_id: int
    user: str | None
    workflow_uri: str
    workflow_sha256: str | None
    state: JobState = attrs.field(converter=JobState)
    paused_from: JobState | None = attrs.field(
        converter=lambda v: None if v is None else JobState(v)
    )
    priority: int
    created_at: datetime.datetime
    queued_at: datetime.datetime | None
    started_at: datetime.datetime | None
    ended_at: datetime.datetime | None
    running_seconds: float
    running_since: datetime.datetime | None
    exit_code: int | None
    error: str | None
    progress: float
    cpu_seconds: float | None
    peak_memory_bytes: int | None
    job_dir: str
    resources: dict[str, Any]
    backend: str | None
    backend_ref: Any
    events_consumed: int
    last_seq: int

    def running_time(self, now: datetime.datetime) -> float:
        """Seconds spent RUNNING or WAITING (paused time not counted)."""
        extra = (now - self.running_since).total_seconds() if self.running_since else 0.0
        return self.running_seconds + max(extra, 0.0)


@attrs.frozen
class JobInput:
    name: str
    uri: str
    status: str
    sha256: str | None
    size: int | None
    staged_at: datetime.datetime | None


@attrs.frozen
class JobDetail:
    """A job with its parameters and inputs, read in one transaction."""

    job: Job
    parameters: dict[str, Any]
    inputs: list[JobInput]


@attrs.frozen
class Event:
    id: int
    job_id: str
    frontend_id: int
    seq: int
    type: str
    time: datetime.datetime
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job_id,
            "seq": self.seq,
            "type": self.type,
            "time": isoformat(self.time),
            "data": self.data,
        }


@attrs.frozen
class Message:
    id: int
    job_id: str
    time: datetime.datetime
    level: str
    source: str
    text: str


@attrs.frozen
class Subscription:
    id: str
    frontend_id: int
    url: str
    job_id: str | None
    event_types: list[str] | None
    secret: str
    created_at: datetime.datetime
    status: str
    consecutive_failures: int
    last_error: str | None
    ended_at: datetime.datetime | None


@attrs.frozen
class CacheEntry:
    uri: str
    sha256: str
    size: int
    etag: str | None
    last_modified: str | None
    fetched_at: datetime.datetime
    checked_at: datetime.datetime


@attrs.frozen
class AuditRecord:
    id: int
    time: datetime.datetime
    actor: str
    frontend_id: int | None
    user: str | None
    action: str
    job_id: str | None
    outcome: str
    status: int | None
    details: dict[str, Any] | None
