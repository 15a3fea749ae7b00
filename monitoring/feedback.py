"""Ground truth after the fact: feedback by request id, joined with logged predictions into live accuracy.

The drift monitor keeps every logged prediction's request id with its predicted class (or value) in
``prediction_log`` for ``monitoring.monitor.PREDICTION_RETENTION``; feedback is stored in ``feedback``,
one row per (model, request id), a later report correcting an earlier one. Feedback may arrive before the
prediction batch that carries its request id: the join is made when accuracy is asked for, not when feedback
is written. Feedback older than the retention simply stops matching (its prediction is gone); the rows are kept
because they are small and are the users' own reports.

``post_feedback`` is the transport-free core of the feedback API (HTTP and CLI both call it): validation
errors are ``BadRequest``, and each post publishes the model's live accuracy on ``drift-metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from release import registry
from release.db import session_scope
from release.ports import EventBus
from schemas.errors import BadRequest, NotFound
from schemas.events import EventType, Topic, make_event
from schemas.tables import FeedbackRow, PredictionLogRow, utcnow

MAX_ITEMS = 10_000


class FeedbackItem(BaseModel):
    """Ground truth for one request: a class ``label`` (name or index) or a numeric ``value``, not both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    label: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    value: float | None = None

    @model_validator(mode="after")
    def _one_truth(self) -> FeedbackItem:
        if (self.label is None) == (self.value is None):
            raise ValueError("give exactly one of label and value")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError("value must be a finite number")
        return self


class FeedbackPost(BaseModel):
    """A feedback post: ``{"model", "items": [...]}``, or one item's fields inline beside ``model``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Annotated[str, Field(min_length=1, max_length=63)]
    actor: Annotated[str, Field(min_length=1, max_length=128)] = "api"
    items: Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_ITEMS)]

    @model_validator(mode="before")
    @classmethod
    def _single(cls, data: Any) -> Any:
        if isinstance(data, dict) and "items" not in data and "request_id" in data:
            single = {k: data[k] for k in ("request_id", "label", "value") if k in data}
            rest = {k: v for k, v in data.items() if k not in single}
            return {**rest, "items": [single]}
        return data


@dataclass(frozen=True)
class VersionAccuracy:
    """Live quality of one version from the feedback joined so far."""

    model: str
    version: str
    labelled: int
    correct: int
    accuracy: float | None
    valued: int
    mae: float | None


def record_feedback(session: Session, *, model: str, request_id: str, actor: str, label: str | None = None,
                    value: float | None = None) -> None:
    """Store (or correct) the ground truth of one request, in the caller's transaction."""
    row = session.exec(select(FeedbackRow).where(FeedbackRow.model == model)
                       .where(FeedbackRow.request_id == request_id)).first()
    row = row or FeedbackRow(model=model, request_id=request_id, actor=actor)
    row.label, row.value, row.actor, row.at = label, value, actor, utcnow()
    session.add(row)


def live_accuracy(session: Session, model: str, version: str | None = None) -> list[VersionAccuracy]:
    """Accuracy (labels) and mean absolute error (values) per version, over predictions that got feedback."""
    # sqlalchemy's select: sqlmodel's typed overloads stop at four columns.
    query = (sa.select(col(PredictionLogRow.version), col(PredictionLogRow.predicted_class),
                       col(PredictionLogRow.predicted_value), col(FeedbackRow.label), col(FeedbackRow.value))
             .join(FeedbackRow, sa.and_(col(FeedbackRow.model) == col(PredictionLogRow.model),
                                     col(FeedbackRow.request_id) == col(PredictionLogRow.request_id)))
             .where(col(PredictionLogRow.model) == model))
    if version is not None:
        query = query.where(col(PredictionLogRow.version) == version)
    by_version: dict[str, list[tuple[int | None, float | None, str | None, float | None]]] = {}
    for v, predicted_class, predicted_value, label, value in session.execute(query).all():
        by_version.setdefault(v, []).append((predicted_class, predicted_value, label, value))
    return [_score(model, v, rows, _class_names(session, model, v)) for v, rows in sorted(by_version.items())]


def _class_names(session: Session, model: str, version: str) -> list[str]:
    try:
        labels = registry.get_version(session, model, version).manifest.get("labels")
    except NotFound:
        return []
    return [str(label) for label in labels] if isinstance(labels, list) else []


def _score(model: str, version: str, rows: Sequence[tuple[int | None, float | None, str | None, float | None]],
           names: list[str]) -> VersionAccuracy:
    # A label matches its class's name from the manifest or its index, whichever the reporter used.
    hits = [label in {str(c), names[c] if c < len(names) else str(c)}
            for c, _, label, _ in rows if c is not None and label is not None]
    errors = [abs(p - v) for _, p, _, v in rows if p is not None and v is not None]
    return VersionAccuracy(model=model, version=version, labelled=len(hits), correct=sum(hits),
                           accuracy=sum(hits) / len(hits) if hits else None, valued=len(errors),
                           mae=sum(errors) / len(errors) if errors else None)


def post_feedback(engine: Engine, bus: EventBus, payload: dict[str, Any]) -> dict[str, Any]:
    """Validate and store a feedback post, publish ``accuracy.measured``; returns the stored count and accuracy."""
    try:
        post = FeedbackPost.model_validate(payload)
    except ValidationError as error:
        raise BadRequest(f"invalid feedback: {error.error_count()} errors",
                         hint='Send {"model", "request_id", "label" or "value"}, or {"model", "items": [...]}.',
                         details={"errors": error.errors(include_url=False, include_context=False,
                                                         include_input=False)}) from error
    with session_scope(engine) as session:
        # Raises NotFound for a model that was never registered, before anything is written.
        registry.list_versions(session, post.model, limit=1)
        for item in post.items:
            record_feedback(session, model=post.model, request_id=item.request_id, actor=post.actor,
                            label=item.label, value=item.value)
        accuracy = [asdict(a) for a in live_accuracy(session, post.model)]
        data = {"model": post.model, "feedback": len(post.items), "actor": post.actor, "versions": accuracy}
        bus.publish(make_event(EventType.ACCURACY_MEASURED, data), topic=Topic.DRIFT_METRICS, session=session)
    return {"model": post.model, "recorded": len(post.items), "accuracy": accuracy}
