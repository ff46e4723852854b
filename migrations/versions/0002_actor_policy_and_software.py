"""actor policy and third-party software registry

The admin's policy per actor class (allow, replace:<Class>, remove, reject)
and the software the engine's actors may call (R, Octave, Matlab, Python),
both kept in the store so kree-admin can change them while the daemon runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa
from kree.store.model import UTCDateTime


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('actor_policies',
    sa.Column('actor_class', sa.String(length=255), nullable=False),
    sa.Column('policy', sa.String(length=300), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('actor_class', name=op.f('pk_actor_policies'))
    )
    op.create_table('software',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('version', sa.Text(), nullable=True),
    sa.Column('detected_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_software'))
    )


def downgrade() -> None:
    op.drop_table('software')
    op.drop_table('actor_policies')
