"""initial schema: frontends, jobs and their parameters, inputs and messages,
the event log, subscriptions and deliveries, the workflow cache, the audit log

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa
from kree.store.model import UTCDateTime


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('frontends',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.Text(), server_default='', nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('revoked_at', UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_frontends')),
    sa.UniqueConstraint('fingerprint', name=op.f('uq_frontends_fingerprint')),
    sa.UniqueConstraint('name', name=op.f('uq_frontends_name'))
    )
    op.create_table('workflow_cache',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('etag', sa.Text(), nullable=True),
    sa.Column('last_modified', sa.Text(), nullable=True),
    sa.Column('fetched_at', UTCDateTime(), nullable=False),
    sa.Column('checked_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workflow_cache')),
    sa.UniqueConstraint('uri', name=op.f('uq_workflow_cache_uri'))
    )
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('time', UTCDateTime(), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('frontend_id', sa.Integer(), nullable=True),
    sa.Column('end_user', sa.String(length=255), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['frontend_id'], ['frontends.id'], name=op.f('fk_audit_log_frontend_id_frontends')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    op.create_index('ix_audit_log_time', 'audit_log', ['time'])
    op.create_table('events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('frontend_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('time', UTCDateTime(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['frontend_id'], ['frontends.id'], name=op.f('fk_events_frontend_id_frontends')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('job_id', 'seq', name=op.f('uq_events_job_id_seq'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('frontend_id', sa.Integer(), nullable=False),
    sa.Column('end_user', sa.String(length=255), nullable=True),
    sa.Column('workflow_uri', sa.Text(), nullable=False),
    sa.Column('workflow_sha256', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('paused_from', sa.String(length=16), nullable=True),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('queued_at', UTCDateTime(), nullable=True),
    sa.Column('started_at', UTCDateTime(), nullable=True),
    sa.Column('ended_at', UTCDateTime(), nullable=True),
    sa.Column('running_seconds', sa.Float(), server_default='0', nullable=False),
    sa.Column('running_since', UTCDateTime(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('progress', sa.Float(), server_default='0', nullable=False),
    sa.Column('cpu_seconds', sa.Float(), nullable=True),
    sa.Column('peak_memory_bytes', sa.BigInteger(), nullable=True),
    sa.Column('job_dir', sa.Text(), nullable=False),
    sa.Column('resources', sa.JSON(), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=True),
    sa.Column('backend_ref', sa.JSON(), nullable=True),
    sa.Column('events_consumed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_seq', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['frontend_id'], ['frontends.id'], name=op.f('fk_jobs_frontend_id_frontends')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index('ix_jobs_frontend_id', 'jobs', ['frontend_id', 'id'])
    op.create_index('ix_jobs_frontend_state', 'jobs', ['frontend_id', 'state', 'id'])
    op.create_index('ix_jobs_state', 'jobs', ['state', 'priority', 'queued_at'])
    op.create_table('subscriptions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('frontend_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('event_types', sa.JSON(), nullable=True),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='active', nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('ended_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['frontend_id'], ['frontends.id'], name=op.f('fk_subscriptions_frontend_id_frontends')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscriptions'))
    )
    op.create_index('ix_subscriptions_frontend', 'subscriptions', ['frontend_id', 'status'])
    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('subscription_id', sa.String(length=32), nullable=False),
    sa.Column('event_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', UTCDateTime(), nullable=False),
    sa.Column('last_attempt_at', UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_deliveries_event_id_events'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_deliveries_subscription_id_subscriptions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    sa.UniqueConstraint('subscription_id', 'event_id', name=op.f('uq_deliveries_subscription_id_event_id'))
    )
    op.create_index('ix_deliveries_due', 'deliveries', ['status', 'next_attempt_at'])
    op.create_table('job_inputs',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('staged_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_inputs_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'name', name=op.f('pk_job_inputs'))
    )
    op.create_table('job_messages',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('time', UTCDateTime(), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=1000), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_messages_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_messages'))
    )
    op.create_index('ix_job_messages_job', 'job_messages', ['job_id', 'id'])
    op.create_table('job_parameters',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=1000), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_parameters_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'name', name=op.f('pk_job_parameters'))
    )


def downgrade() -> None:
    op.drop_table('job_parameters')
    op.drop_table('job_messages')
    op.drop_table('job_inputs')
    op.drop_table('deliveries')
    op.drop_table('subscriptions')
    op.drop_table('jobs')
    op.drop_table('events')
    op.drop_table('audit_log')
    op.drop_table('workflow_cache')
    op.drop_table('frontends')
