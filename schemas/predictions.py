"""Prediction records and the drift payloads built from them, as they travel on the bus.

The router publishes ``PredictionRecord`` batches on ``prediction-logs``; the drift monitor publishes
``DriftMeasurement`` on ``drift-metrics`` and ``DriftAlertData`` on ``alerts``. Pure data: the statistics
themselves live in ``monitoring/``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PREDICTION_SCHEMA_VERSION: Literal[1] = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PredictionRecord(_Frozen):
    """One served prediction, sampled by the router.

    ``inputs`` is the instance flattened to numbers; for large inputs (images) the sender may send
    ``input_features`` instead: the same summary features the reference profile was built from, in the
    profile's feature order. At most one of the two is set; a record with neither only counts towards the
    class distribution. A request the router cannot read as numbers (an image, text sent to ``/predictions``)
    is recorded by ``input_size`` and ``input_sha256`` only, never its content.
    """

    schema_version: Literal[1] = PREDICTION_SCHEMA_VERSION
    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    group_request_id: str | None = None
    model: str
    version: str
    received_at: datetime
    completed_at: datetime
    latency_ms: Annotated[float, Field(ge=0)]
    inputs: list[float] | None = None
    input_features: list[float] | None = None
    input_size: Annotated[int, Field(ge=0)] | None = None
    input_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    outputs: list[float] | None = None
    predicted_class: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_input_form(self) -> PredictionRecord:
        if self.inputs is not None and self.input_features is not None:
            raise ValueError("send either inputs or input_features, not both")
        return self


class PredictionBatch(_Frozen):
    """Payload of ``predictions.logged``: records of one model, in the order the router served them."""

    records: Annotated[list[PredictionRecord], Field(min_length=1)]


class Severity(StrEnum):
    """How bad drift is; ordered by ``rank``."""

    NONE = "none"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0, 1, 2: lets callers compare severities without relying on string order."""
        return _RANK[self]


_RANK = {Severity.NONE: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class ClosedBy(StrEnum):
    """Why a window stopped accepting records."""

    COUNT = "count"
    TIME = "time"
    FLUSH = "flush"


class DriftWindow(_Frozen):
    """The records a measurement was computed on: which version, which slice of time, how many."""

    model: str
    version: str
    index: Annotated[int, Field(ge=0)]
    start: datetime
    end: datetime
    records: Annotated[int, Field(ge=0)]
    invalid_records: Annotated[int, Field(ge=0)] = 0
    closed_by: ClosedBy


class FeatureDrift(_Frozen):
    """Drift statistics of one numeric input feature against the reference profile."""

    name: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    ks_pvalue_adjusted: float
    wasserstein: float
    wasserstein_normalized: float
    #: The window's share of records in each of the reference profile's PSI bins (same bins, same floor), so a
    #: reader can overlay live on reference without the records; absent in measurements made before it existed.
    proportions: list[float] | None = None


class ClassDrift(_Frozen):
    """Drift of the predicted-class distribution: chi-square test of homogeneity and JS distance (base 2)."""

    chi2: float
    chi2_pvalue: float
    dof: Annotated[int, Field(ge=0)]
    js_distance: float
    counts: list[int]


class Correction(StrEnum):
    """Multiple-testing correction applied to the per-feature KS p-values."""

    BENJAMINI_HOCHBERG = "bh"
    BONFERRONI = "bonferroni"


class DriftMeasurement(_Frozen):
    """Payload of ``drift.measured``: every statistic of one window."""

    schema_version: Literal[1] = PREDICTION_SCHEMA_VERSION
    window: DriftWindow
    samples: Annotated[int, Field(ge=0)]
    correction: Correction
    features: list[FeatureDrift] = Field(default_factory=list)
    classes: ClassDrift | None = None


class AlertKind(StrEnum):
    """What happened to an alert in this step."""

    FIRED = "fired"
    ESCALATED = "escalated"
    RESOLVED = "resolved"


class DriftAlertData(_Frozen):
    """Payload of ``drift.alert`` (fired, escalated) and ``drift.resolved``."""

    alert_id: str
    model: str
    version: str
    kind: AlertKind
    severity: Severity
    previous_severity: Severity
    window_index: Annotated[int, Field(ge=0)]
    reasons: list[str] = Field(default_factory=list)
    rollback_requested: bool = False
