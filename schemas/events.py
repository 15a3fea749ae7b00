"""CloudEvents this system publishes and consumes, and the payload of each type.

Envelope fields follow CloudEvents 1.0 (``id``, ``source``, ``type``, ``specversion``, ``time``, ``subject``);
``type`` is ``dev.modelrelease.<thing>.v1``. The ``id`` is what consumers de-duplicate on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.states import VersionState


class Topic(StrEnum):
    """The topics of the architecture: four for the data path, and the controller's safety-net ticks."""

    MODEL_EVENTS = "model-events"
    PREDICTION_LOGS = "prediction-logs"
    DRIFT_METRICS = "drift-metrics"
    ALERTS = "alerts"
    TICKS = "release-ticks"


class EventType(StrEnum):
    """Every event type; the value is the CloudEvents ``type``."""

    ARTIFACT_REJECTED = "dev.modelrelease.artifact.rejected.v1"
    MODEL_REGISTERED = "dev.modelrelease.model.registered.v1"
    VERSION_STATE_CHANGED = "dev.modelrelease.version.state_changed.v1"
    ROLLOUT_READY = "dev.modelrelease.rollout.ready.v1"
    ROLLOUT_FAILED = "dev.modelrelease.rollout.failed.v1"
    GATES_EVALUATED = "dev.modelrelease.gates.evaluated.v1"
    ALIAS_MOVED = "dev.modelrelease.alias.moved.v1"
    RELEASE_ROLLED_BACK = "dev.modelrelease.release.rolled_back.v1"
    ROLLBACK_REQUESTED = "dev.modelrelease.release.rollback_requested.v1"
    PREDICTIONS_LOGGED = "dev.modelrelease.predictions.logged.v1"
    DRIFT_MEASURED = "dev.modelrelease.drift.measured.v1"
    DRIFT_ALERT = "dev.modelrelease.drift.alert.v1"
    DRIFT_RESOLVED = "dev.modelrelease.drift.resolved.v1"
    ACCURACY_MEASURED = "dev.modelrelease.accuracy.measured.v1"
    CANARY_STEP = "dev.modelrelease.canary.step.v1"
    RECONCILE_DUE = "dev.modelrelease.version.reconcile_due.v1"
    TICK = "dev.modelrelease.tick.v1"


SOURCE = "//modelrelease.dev/release"


def _now() -> datetime:
    return datetime.now(UTC)


class CloudEvent(BaseModel):
    """A CloudEvent with JSON data, as published on every topic."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str = SOURCE
    type: str
    specversion: str = "1.0"
    time: datetime = Field(default_factory=_now)
    subject: str | None = None
    datacontenttype: str = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def model(self) -> str | None:
        """The model this event is about, when it is about one."""
        value = self.data.get("model")
        return value if isinstance(value, str) else None

    @property
    def version(self) -> str | None:
        """The version this event is about, when it is about one."""
        value = self.data.get("version")
        return value if isinstance(value, str) else None

    @property
    def ordering_key(self) -> str:
        """Events about one model must be seen in publish order by transports that can keep it."""
        return self.model or ""


class ArtifactRejectedData(BaseModel):
    """Payload of ``artifact.rejected``."""

    bucket: str
    path: str
    reason: str
    message: str
    file: str | None = None
    model: str | None = None
    version: str | None = None


class ModelRegisteredData(BaseModel):
    """Payload of ``model.registered``."""

    model: str
    version: str
    version_id: int
    digest: str
    artifact_uri: str
    format: str


class StateChangedData(BaseModel):
    """Payload of ``version.state_changed``: one edge of the state machine was taken."""

    model: str
    version: str
    version_id: int
    previous: VersionState
    state: VersionState
    reason: str = ""


class RolloutData(BaseModel):
    """Payload of ``rollout.ready`` and ``rollout.failed``."""

    model: str
    version: str
    endpoints: list[str] = Field(default_factory=list)
    error: str | None = None
    log_excerpt: str | None = None
    reason: str | None = None
    """Why a rollout failed, as a stable reason code (``checksum_mismatch``, ``rollout_failed``...)."""


class GatesEvaluatedData(BaseModel):
    """Payload of ``gates.evaluated``: the whole gate report."""

    model: str
    version: str
    passed: bool
    report: dict[str, Any]


class AliasMovedData(BaseModel):
    """Payload of ``alias.moved``."""

    model: str
    alias: str
    version: str | None
    previous_version: str | None
    revision: int
    actor: str
    reason: str


class RolledBackData(BaseModel):
    """Payload of ``release.rolled_back``."""

    model: str
    version: str
    restored_version: str | None
    actor: str
    reason: str


class CanaryStepData(BaseModel):
    """Payload of ``canary.step``: a canary step started (its route weight is set) or was judged."""

    model: str
    version: str
    step: int
    """Index of the step in the policy's ``rollout.steps``, from 0."""
    weight: int
    phase: Literal["started", "passed", "failed"]
    result: dict[str, Any] | None = None
    """The judged step (``CanaryStepResult``) once ``phase`` is passed or failed."""


class ReconcileDueData(BaseModel):
    """Payload of ``version.reconcile_due``: look at a version again once ``due_at`` has passed.

    A step that must wait (pods becoming ready, a canary watch window, a rollout slot) publishes this instead
    of sleeping, so one message is always one short step.
    """

    model: str
    version: str
    due_at: datetime
    why: str = ""


class RollbackRequestedData(BaseModel):
    """Payload of ``release.rollback_requested``: someone (a person, the monitor) asks the controller to roll back."""

    model: str
    version: str | None = None
    actor: str
    reason: str


def make_event(event_type: EventType, data: BaseModel | dict[str, Any], *,
               subject: str | None = None, event_id: str | None = None) -> CloudEvent:
    """Build an event; ``event_id`` makes it deterministic, so a retried step publishes the same event."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    if subject is None and "model" in payload:
        subject = f"models/{payload['model']}" + (f"/versions/{payload['version']}"
                                                    if payload.get("version") else "")
    kwargs: dict[str, Any] = {"type": str(event_type), "data": payload, "subject": subject}
    if event_id is not None:
        kwargs["id"] = event_id
    return CloudEvent(**kwargs)
