"""Builders shared by the monitoring tests: prediction records, measurements and policies in one line each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from monitoring.windows import WindowData
from schemas.predictions import (
    ClassDrift,
    ClosedBy,
    Correction,
    DriftMeasurement,
    DriftWindow,
    FeatureDrift,
    PredictionRecord,
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def record(i: int, *, model: str = "digits", version: str = "1", seconds: float | None = None,
           inputs: list[float] | None = None, features: list[float] | None = None,
           predicted: int | None = None, outputs: list[float] | None = None) -> PredictionRecord:
    """A record ``i`` seconds (or ``seconds``) after T0."""
    at = T0 + timedelta(seconds=i if seconds is None else seconds)
    return PredictionRecord(request_id=f"r{i}", model=model, version=version, received_at=at,
                            completed_at=at + timedelta(milliseconds=5), latency_ms=5.0, inputs=inputs,
                            input_features=features, predicted_class=predicted, outputs=outputs)


def measurement(index: int, *, psi: float = 0.0, p_adj: float = 0.5, wasserstein: float = 0.0,
                samples: int = 500, js: float | None = None, chi2_p: float = 0.5,
                model: str = "digits", version: str = "1") -> DriftMeasurement:
    """A one-feature measurement of window ``index`` with the given effect size and significance."""
    window = DriftWindow(model=model, version=version, index=index, start=T0, end=T0, records=samples,
                         closed_by=ClosedBy.COUNT)
    feature = FeatureDrift(name="x0", psi=psi, ks_statistic=0.1, ks_pvalue=p_adj, ks_pvalue_adjusted=p_adj,
                           wasserstein=wasserstein, wasserstein_normalized=wasserstein)
    classes = None if js is None else ClassDrift(chi2=1.0, chi2_pvalue=chi2_p, dof=9, js_distance=js,
                                                 counts=[samples // 10] * 10)
    return DriftMeasurement(window=window, samples=samples, correction=Correction.BENJAMINI_HOCHBERG,
                            features=[feature], classes=classes)


def window_data(index: int, x: np.ndarray[Any, Any], classes: np.ndarray[Any, Any]) -> WindowData:
    """A closed window of model ``m`` v1 holding inputs ``x`` and predicted ``classes``."""
    meta = DriftWindow(model="m", version="1", index=index, start=T0, end=T0, records=len(x),
                       closed_by=ClosedBy.COUNT)
    return WindowData(meta=meta, inputs=x, input_features=np.empty((0, 0)), predicted=classes)
