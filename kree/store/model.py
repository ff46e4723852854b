"""
The tables, on one MetaData.

This module describes the schema at the newest migration; the revisions in
C{migrations/versions/} build it step by step, and a test checks that the two
agree (alembic autogenerate finds no difference).
"""

import datetime

import sqlalchemy as sa

# Stable constraint names, so that migrations can name what they alter
# (SQLite's batch mode needs them).
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(datetime.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=datetime.timezone.utc)


JOB_ID = sa.String(32)

frontends = sa.Table(
    "frontends",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    # SHA-256 of the DER certificate, lower-case hex.
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("subject", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", JOB_ID, primary_key=True),
    sa.Column("frontend_id", sa.Integer, sa.ForeignKey("frontends.id"), nullable=False),
    # The frontend's own end user (X-KREE-User), if it said.
    sa.Column("end_user", sa.String(255), nullable=True),
    sa.Column("workflow_uri", sa.Text, nullable=False),
    # The version of the workflow the job runs, once fetched.
    sa.Column("workflow_sha256", sa.String(64), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("paused_from", sa.String(16), nullable=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("queued_at", UTCDateTime, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    # Running time = running_seconds + (now - running_since) while running.
    sa.Column("running_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("running_since", UTCDateTime, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("progress", sa.Float, nullable=False, server_default="0"),
    sa.Column("cpu_seconds", sa.Float, nullable=True),
    sa.Column("peak_memory_bytes", sa.BigInteger, nullable=True),
    sa.Column("job_dir", sa.Text, nullable=False),
    sa.Column("resources", sa.JSON, nullable=False),
    sa.Column("backend", sa.String(32), nullable=True),
    # What the backend needs to find the job again after a restart
    # (pid and process create time, a Slurm job id, ...).
    sa.Column("backend_ref", sa.JSON, nullable=True),
    # Lines of JOBDIR/events.jsonl already applied to this record.
    sa.Column("events_consumed", sa.Integer, nullable=False, server_default="0"),
    # The seq of this job's newest event; the next one is last_seq + 1.
    sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    # Job ids sort by creation time, so (frontend, id) serves both the
    # frontend's job list and its cursor pagination.
    sa.Index("ix_jobs_frontend_id", "frontend_id", "id"),
    sa.Index("ix_jobs_frontend_state", "frontend_id", "state", "id"),
    sa.Index("ix_jobs_state", "state", "priority", "queued_at"),
)

job_parameters = sa.Table(
    "job_parameters",
    metadata,
    sa.Column("job_id", JOB_ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    # Full Ptolemy name, such as .model.Ramp.step
    sa.Column("name", sa.String(1000), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
)

job_inputs = sa.Table(
    "job_inputs",
    metadata,
    sa.Column("job_id", JOB_ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    # pending | staged | failed
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("staged_at", UTCDateTime, nullable=True),
)

job_messages = sa.Table(
    "job_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id", JOB_ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("time", UTCDateTime, nullable=False),
    # info | warning | error
    sa.Column("level", sa.String(16), nullable=False),
    # The actor's full name, or "kree" for the daemon's own messages.
    sa.Column("source", sa.String(1000), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Index("ix_job_messages_job", "job_id", "id"),
)

# The event log and outbox.  No foreign key to jobs: a job's events (its
# job.deleted event above all) must outlive the job row until delivered.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", JOB_ID, nullable=False),
    sa.Column("frontend_id", sa.Integer, sa.ForeignKey("frontends.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.UniqueConstraint("job_id", "seq"),
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("frontend_id", sa.Integer, sa.ForeignKey("frontends.id"), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    # None: every job of the frontend.
    sa.Column("job_id", JOB_ID, nullable=True),
    # None: every event type.
    sa.Column("event_types", sa.JSON, nullable=True),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # active | failing | ended
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Index("ix_subscriptions_frontend", "frontend_id", "status"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "subscription_id",
        sa.String(32),
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column(
        "event_id", sa.Integer, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    ),
    # pending | delivered | dead
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("subscription_id", "event_id"),
    sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
)

# Workflows and inputs fetched by URI, and uploaded workflows
# (kree:workflow/<sha256>).  Bodies live in <state-dir>/cache/ by hash.
workflow_cache = sa.Table(
    "workflow_cache",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.Text, nullable=False, unique=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.Text, nullable=True),
    sa.Column("last_modified", sa.Text, nullable=True),
    sa.Column("fetched_at", UTCDateTime, nullable=False),
    sa.Column("checked_at", UTCDateTime, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", UTCDateTime, nullable=False),
    # A frontend's name, or "admin".
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("frontend_id", sa.Integer, sa.ForeignKey("frontends.id"), nullable=True),
    sa.Column("end_user", sa.String(255), nullable=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("job_id", JOB_ID, nullable=True),
    # ok | refused | failed
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("status", sa.Integer, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Index("ix_audit_log_time", "time"),
)

# Revision 0002: the admin's actor policy and the third-party software registry.
actor_policies = sa.Table(
    "actor_policies",
    metadata,
    sa.Column("actor_class", sa.String(255), primary_key=True),
    # allow | replace:<Class> | remove | reject
    sa.Column("policy", sa.String(300), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

software = sa.Table(
    "software",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("version", sa.Text, nullable=True),
    sa.Column("detected_at", UTCDateTime, nullable=False),
)

# Revision 0003: which frontend uploaded which workflow document, so that one
# frontend learns nothing of another's uploads.
workflow_uploads = sa.Table(
    "workflow_uploads",
    metadata,
    sa.Column("frontend_id", sa.Integer, sa.ForeignKey("frontends.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("uploaded_at", UTCDateTime, nullable=False),
)
