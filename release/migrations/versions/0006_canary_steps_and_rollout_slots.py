"""canary steps persisted one by one, and the rollout slots that bound how many versions are in flight

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from schemas.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "canary_step",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("model_version.id"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("watch_s", sa.Float(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("judged_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("version_id", "attempt", "step", name="uq_canary_step"),
    )
    op.create_index("ix_canary_step_version_id", "canary_step", ["version_id"])
    op.create_table(
        "rollout_slot",
        sa.Column("slot", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("model_version.id"), nullable=False, unique=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout_slot")
    op.drop_index("ix_canary_step_version_id", table_name="canary_step")
    op.drop_table("canary_step")
