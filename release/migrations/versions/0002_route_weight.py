"""route weights for canary steps

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import schemas.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_weight",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("updated_at", schemas.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "version", name="uq_route_weight"),
    )
    op.create_index(op.f("ix_route_weight_model"), "route_weight", ["model"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_route_weight_model"), table_name="route_weight")
    op.drop_table("route_weight")
