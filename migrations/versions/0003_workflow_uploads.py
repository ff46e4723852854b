"""which frontend uploaded which workflow

Uploaded workflows are stored once by content, but a frontend must learn
nothing about another's uploads: this table says who uploaded what, so an
upload answers 201 to each frontend the first time, and a job may name only
the frontend's own kree:workflow/<sha256> URIs.  Existing jobs' uploaded
workflows are recorded for their frontends.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa
from kree.store.model import UTCDateTime


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('workflow_uploads',
    sa.Column('frontend_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('uploaded_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['frontend_id'], ['frontends.id'],
                            name=op.f('fk_workflow_uploads_frontend_id_frontends'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('frontend_id', 'sha256', name=op.f('pk_workflow_uploads'))
    )
    # The hash follows the 14 characters of "kree:workflow/".
    op.execute(
        "INSERT INTO workflow_uploads (frontend_id, sha256, uploaded_at) "
        "SELECT frontend_id, substr(workflow_uri, 15), min(created_at) FROM jobs "
        "WHERE workflow_uri LIKE 'kree:workflow/%' "
        "GROUP BY frontend_id, substr(workflow_uri, 15)")


def downgrade() -> None:
    op.drop_table('workflow_uploads')
