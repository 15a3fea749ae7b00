"""object generations recorded at registration, so pods copy exactly the registered objects

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Versions registered before this revision have no generations: their pods are pinned by digest alone.
    op.add_column("model_version", sa.Column("generations", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    op.drop_column("model_version", "generations")
