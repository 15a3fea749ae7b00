"""Registry and bus tables (SQLModel). Pure declarations: the repository code in ``release/`` does the I/O.

Migrations under ``release/migrations`` create exactly these tables; a test checks the two never diverge.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from schemas.states import VersionState


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values and hands them back naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


def _ts() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def _json(nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=sa.JSON, nullable=True)
    return Field(default_factory=dict, sa_type=sa.JSON, nullable=False)


class Model(SQLModel, table=True):
    """A named model: the thing aliases point into."""

    __tablename__ = "model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True, index=True)
    created_at: datetime = _ts()


class ModelVersion(SQLModel, table=True):
    """One registered version of a model and where it is in its life."""

    __tablename__ = "model_version"
    __table_args__ = (sa.UniqueConstraint("model_id", "version", name="uq_model_version"),
                      sa.Index("ix_model_version_state", "state"))

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    version: str = Field(max_length=64)
    seq: int = Field(default=0, description="registration order within the model")
    state: VersionState = Field(default=VersionState.REGISTERED, sa_type=sa.String(16))
    state_reason: str = Field(default="", sa_type=sa.Text)
    intent: str = Field(default="", max_length=16,
                        description="'' = normal release; 'promote'/'restore' = skip gates (a person or a rollback)")
    digest: str = Field(max_length=71)
    artifact_uri: str = Field(sa_type=sa.Text)
    format: str = Field(max_length=16)
    manifest: dict[str, Any] = _json()
    generations: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON, nullable=False,
                                        sa_column_kwargs={"server_default": "{}"},
                                        description="file path -> object generation read at registration")
    metrics: dict[str, Any] = _json()
    policy: dict[str, Any] = _json()
    reference_profile: dict[str, Any] | None = _json(nullable=True)
    revision: int = Field(default=0, description="bumped on every state change; compare-and-swap guard")
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Alias(SQLModel, table=True):
    """A movable name (PROD, STG, anything) pointing at one version of a model."""

    __tablename__ = "alias"
    __table_args__ = (sa.UniqueConstraint("model_id", "name", name="uq_alias"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    name: str = Field(max_length=64)
    version_id: int | None = Field(default=None, foreign_key="model_version.id")
    revision: int = Field(default=0)
    updated_at: datetime = _ts()


class GateReportRow(SQLModel, table=True):
    """A stored gate report for one evaluation of a version."""

    __tablename__ = "gate_report"

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="model_version.id", index=True)
    passed: bool
    report: dict[str, Any] = _json()
    created_at: datetime = _ts()


class Deployment(SQLModel, table=True):
    """Serving pods of one version on one backend."""

    __tablename__ = "deployment"
    __table_args__ = (sa.UniqueConstraint("version_id", "backend", name="uq_deployment"),)

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="model_version.id", index=True)
    backend: str = Field(max_length=32)
    status: str = Field(max_length=16)
    endpoints: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    log_excerpt: str = Field(default="", sa_type=sa.Text)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class AuditEntry(SQLModel, table=True):
    """Append-only: who did what to which model, version or alias, and why."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts()
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64, index=True)
    model: str = Field(max_length=63, index=True)
    version: str | None = Field(default=None, max_length=64)
    alias: str | None = Field(default=None, max_length=64)
    from_version: str | None = Field(default=None, max_length=64)
    to_version: str | None = Field(default=None, max_length=64)
    reason: str = Field(default="", sa_type=sa.Text)
    details: dict[str, Any] = _json()


class ArtifactRecord(SQLModel, table=True):
    """What intake last decided about an artifact path: pending, registered or rejected."""

    __tablename__ = "artifact"

    id: int | None = Field(default=None, primary_key=True)
    bucket: str = Field(max_length=255)
    prefix: str = Field(max_length=1024, sa_type=sa.String(1024))
    status: str = Field(max_length=16)
    digest: str | None = Field(default=None, max_length=71)
    reason: str | None = Field(default=None, max_length=64)
    message: str = Field(default="", sa_type=sa.Text)
    updated_at: datetime = _ts()

    __table_args__ = (sa.UniqueConstraint("bucket", "prefix", name="uq_artifact"),)


class EventRecord(SQLModel, table=True):
    """The event journal and transactional outbox: every event is written here in its producer's transaction.

    The local bus delivers from here; the Pub/Sub relay publishes rows whose ``published_at`` is still empty.
    """

    __tablename__ = "event"

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=64, unique=True)
    topic: str = Field(max_length=64, index=True)
    type: str = Field(max_length=128)
    subject: str | None = Field(default=None, max_length=512)
    model: str | None = Field(default=None, max_length=63, index=True)
    envelope: dict[str, Any] = _json()
    created_at: datetime = _ts()
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True, index=True)


class Subscription(SQLModel, table=True):
    """A named consumer group on a topic of the local bus."""

    __tablename__ = "bus_subscription"

    name: str = Field(primary_key=True, max_length=64)
    topic: str = Field(max_length=64, index=True)
    ack_deadline_s: float = 60.0
    max_attempts: int = 5
    created_at: datetime = _ts()


class Delivery(SQLModel, table=True):
    """One event waiting for, leased to, or done by one subscription of the local bus."""

    __tablename__ = "bus_delivery"
    __table_args__ = (sa.UniqueConstraint("subscription", "event_seq", name="uq_delivery"),
                      sa.Index("ix_delivery_ready", "subscription", "status", "available_at"))

    id: int | None = Field(default=None, primary_key=True)
    subscription: str = Field(max_length=64)
    event_seq: int = Field(foreign_key="event.seq")
    status: str = Field(default="pending", max_length=8)
    attempts: int = 0
    available_at: datetime = _ts()
    lease_token: str | None = Field(default=None, max_length=160)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class ProcessedEvent(SQLModel, table=True):
    """Consumer-side de-duplication: an event id a consumer has already applied, written in its transaction."""

    __tablename__ = "processed_event"

    consumer: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(primary_key=True, max_length=64)
    at: datetime = _ts()


class RouteWeight(SQLModel, table=True):
    """Share of a model's PROD traffic the router sends to a canary version (0-100)."""

    __tablename__ = "route_weight"
    __table_args__ = (sa.UniqueConstraint("model", "version", name="uq_route_weight"),)

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=63, index=True)
    version: str = Field(max_length=64)
    weight: int = 0
    updated_at: datetime = _ts()


class DriftAlertStateRow(SQLModel, table=True):
    """The drift monitor's alert state of one model version (``monitoring.alerts.AlertState``), kept across restarts."""

    __tablename__ = "drift_alert_state"
    __table_args__ = (sa.UniqueConstraint("model", "version", name="uq_drift_alert_state"),)

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=63, index=True)
    version: str = Field(max_length=64)
    severity: str = Field(default="none", max_length=16)
    alert_id: str | None = Field(default=None, max_length=160)
    state: dict[str, Any] = _json()
    updated_at: datetime = _ts()


class DriftMeasurementRow(SQLModel, table=True):
    """One measured drift window of one model version (``schemas.predictions.DriftMeasurement``)."""

    __tablename__ = "drift_measurement"
    __table_args__ = (sa.UniqueConstraint("model", "version", "window_index", name="uq_drift_measurement"),
                      sa.Index("ix_drift_measurement_model_id", "model", "id"))

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=63)
    version: str = Field(max_length=64)
    window_index: int
    severity: str | None = Field(default=None, max_length=16,
                                 description="the window's own verdict; None when too few samples to judge")
    samples: int = 0
    window_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    window_end: datetime = Field(sa_type=UTCDateTime, nullable=False)
    measurement: dict[str, Any] = _json()
    created_at: datetime = _ts()


class PredictionLogRow(SQLModel, table=True):
    """A logged prediction's request id and output, kept for a bounded time so feedback can be joined to it."""

    __tablename__ = "prediction_log"
    __table_args__ = (sa.UniqueConstraint("model", "request_id", name="uq_prediction_log"),)

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=63)
    version: str = Field(max_length=64)
    request_id: str = Field(max_length=128)
    predicted_class: int | None = None
    predicted_value: float | None = None
    received_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class FeedbackRow(SQLModel, table=True):
    """Ground truth for one served request: a class label or a numeric value, with who reported it."""

    __tablename__ = "feedback"
    __table_args__ = (sa.UniqueConstraint("model", "request_id", name="uq_feedback"),)

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=63, index=True)
    request_id: str = Field(max_length=128)
    label: str | None = Field(default=None, max_length=256)
    value: float | None = None
    actor: str = Field(max_length=128)
    at: datetime = _ts()


class PolicyRevision(SQLModel, table=True):
    """One revision of a model's operator release policy. Append-only: the newest revision is in force."""

    __tablename__ = "policy_revision"
    __table_args__ = (sa.UniqueConstraint("model", "revision", name="uq_policy_revision"),)

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=63, index=True)
    revision: int
    policy: dict[str, Any] = Field(sa_type=sa.JSON)
    actor: str = Field(max_length=128)
    reason: str = Field(default="", sa_type=sa.Text)
    diff: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    created_at: datetime = _ts()


class CanaryStepRecord(SQLModel, table=True):
    """One canary step of one promotion attempt: when it started, the pods' counters then, and its verdict.

    ``attempt`` is the version's revision while it is PROMOTING (a retried version canaries again under a new
    one). ``result`` is the judged ``CanaryStepResult``; None while the step's watch window is open.
    """

    __tablename__ = "canary_step"
    __table_args__ = (sa.UniqueConstraint("version_id", "attempt", "step", name="uq_canary_step"),)

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="model_version.id", index=True)
    attempt: int
    step: int
    weight: int
    watch_s: float
    started_at: datetime = _ts()
    snapshot: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    result: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON(none_as_null=True), nullable=True)
    judged_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class RolloutSlot(SQLModel, table=True):
    """A claim on one of the ``max_rollouts`` slots: at most that many versions hold pods while in flight.

    The primary key is the slot number, so two controllers claiming the same free slot cannot both commit.
    """

    __tablename__ = "rollout_slot"

    slot: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    version_id: int = Field(foreign_key="model_version.id", unique=True)
    claimed_at: datetime = _ts()
