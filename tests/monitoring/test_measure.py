"""A closed window measured against a profile: the event payload carries the detectors' numbers."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import stats

from monitoring.alerts import AlertState
from monitoring.measure import measure
from monitoring.metrics import DriftMetrics
from monitoring.profile import build_profile
from monitoring.windows import WindowAccumulator
from schemas.errors import PermanentError
from schemas.policy import DriftPolicy
from schemas.predictions import Correction, DriftMeasurement, Severity
from tests.monitoring.factories import record


def _window(x, classes, size=None):
    acc = WindowAccumulator(DriftPolicy(window_size=size or len(x), window_seconds=86_400))
    (w,) = acc.add(record(i, inputs=row.tolist(), predicted=int(c)) for i, (row, c) in enumerate(
        zip(x, classes, strict=True)))
    return w


def test_measurement_matches_scipy_and_round_trips():
    """Feature and class statistics in the payload equal SciPy's, and the payload survives JSON."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3000, 3))
    profile = build_profile(ref, labels=rng.integers(0, 4, size=3000))
    x = rng.normal(loc=0.2, size=(400, 3))
    classes = rng.integers(0, 4, size=400)
    m = measure(profile, _window(x, classes), correction=Correction.BONFERRONI)
    assert m.samples == 400 and [f.name for f in m.features] == ["x0", "x1", "x2"]
    for j, f in enumerate(m.features):
        ks = stats.ks_2samp(x[:, j], profile.sample[:, j])
        assert abs(f.ks_pvalue - ks.pvalue) <= 1e-9 and abs(f.ks_statistic - ks.statistic) <= 1e-9
        assert f.ks_pvalue_adjusted == pytest.approx(min(1.0, 3 * ks.pvalue), abs=1e-12)
        w = stats.wasserstein_distance(x[:, j], ref[:, j])
        assert abs(f.wasserstein_normalized - w / ref[:, j].std()) <= 1e-9
    table = np.array([profile.class_counts, np.bincount(classes, minlength=4)])
    assert abs(m.classes.chi2_pvalue - stats.chi2_contingency(table).pvalue) <= 1e-9
    assert DriftMeasurement.model_validate_json(m.model_dump_json()) == m


def test_window_of_summary_features_and_unknown_classes():
    """Precomputed input_features are used as they are; classes the reference lacks are ignored."""
    profile = build_profile(np.random.default_rng(1).normal(size=(200, 2)), labels=[0, 1] * 100)
    acc = WindowAccumulator(DriftPolicy(window_size=10))
    (w,) = acc.add(record(i, features=[0.1 * i, 0.0], predicted=i % 3) for i in range(10))
    m = measure(profile, w)
    assert m.samples == 10 and m.classes.counts == [4, 3]


def test_feature_width_mismatch_is_permanent():
    """Records whose rows do not match the profile's features make a PermanentError, not garbage."""
    profile = build_profile(np.zeros((20, 3)) + np.arange(20)[:, None])
    with pytest.raises(PermanentError):
        measure(profile, _window(np.zeros((10, 2)), np.zeros(10)))


def test_metrics_expose_measurement_and_alert():
    """Gauges on the given registry carry the last window's numbers and the alert severity."""
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry)
    profile = build_profile(np.random.default_rng(2).normal(size=(200, 2)), labels=[0, 1] * 100)
    m = measure(profile, _window(np.zeros((20, 2)), np.zeros(20)))
    metrics.observe(m)
    metrics.set_alert(AlertState(model="digits", version="1", severity=Severity.CRITICAL))
    labels = {"model": "digits", "version": "1"}
    assert registry.get_sample_value("drift_feature_psi", labels | {"feature": "x1"}) == m.features[1].psi
    assert registry.get_sample_value("drift_class_js_distance", labels) == m.classes.js_distance
    assert registry.get_sample_value("drift_alert_severity", labels) == 2
