"""drift monitoring: alert state, measurements, prediction log, feedback

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import schemas.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _ts() -> schemas.tables.UTCDateTime:
    return schemas.tables.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drift_alert_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", _str(63), nullable=False),
        sa.Column("version", _str(64), nullable=False),
        sa.Column("severity", _str(16), nullable=False),
        sa.Column("alert_id", _str(160), nullable=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "version", name="uq_drift_alert_state"),
    )
    op.create_index(op.f("ix_drift_alert_state_model"), "drift_alert_state", ["model"], unique=False)
    op.create_table(
        "drift_measurement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", _str(63), nullable=False),
        sa.Column("version", _str(64), nullable=False),
        sa.Column("window_index", sa.Integer(), nullable=False),
        sa.Column("severity", _str(16), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("window_start", _ts(), nullable=False),
        sa.Column("window_end", _ts(), nullable=False),
        sa.Column("measurement", sa.JSON(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "version", "window_index", name="uq_drift_measurement"),
    )
    op.create_index("ix_drift_measurement_model_id", "drift_measurement", ["model", "id"], unique=False)
    op.create_table(
        "prediction_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", _str(63), nullable=False),
        sa.Column("version", _str(64), nullable=False),
        sa.Column("request_id", _str(128), nullable=False),
        sa.Column("predicted_class", sa.Integer(), nullable=True),
        sa.Column("predicted_value", sa.Float(), nullable=True),
        sa.Column("received_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "request_id", name="uq_prediction_log"),
    )
    op.create_index(op.f("ix_prediction_log_received_at"), "prediction_log", ["received_at"], unique=False)
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", _str(63), nullable=False),
        sa.Column("request_id", _str(128), nullable=False),
        sa.Column("label", _str(256), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("actor", _str(128), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "request_id", name="uq_feedback"),
    )
    op.create_index(op.f("ix_feedback_model"), "feedback", ["model"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_feedback_model"), table_name="feedback")
    op.drop_table("feedback")
    op.drop_index(op.f("ix_prediction_log_received_at"), table_name="prediction_log")
    op.drop_table("prediction_log")
    op.drop_index("ix_drift_measurement_model_id", table_name="drift_measurement")
    op.drop_table("drift_measurement")
    op.drop_index(op.f("ix_drift_alert_state_model"), table_name="drift_alert_state")
    op.drop_table("drift_alert_state")
