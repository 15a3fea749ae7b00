"""Prometheus gauges for drift, so dashboards and PodMonitoring see what the drift monitor sees.

The gauges are registered on a registry the caller passes in (never the process-wide default), so tests and
several monitors in one process do not collide. Label values are bounded by the profile: one series per
model version and feature.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from monitoring.alerts import AlertState
from schemas.predictions import DriftMeasurement

_VERSION = ("model", "version")
_FEATURE = ("model", "version", "feature")


class DriftMetrics:
    """The drift gauges of one registry; ``observe`` a measurement, ``set_alert`` after each alert step."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.psi = Gauge("drift_feature_psi", "Population stability index of a feature in the last window",
                         _FEATURE, registry=registry)
        self.ks_pvalue = Gauge("drift_feature_ks_pvalue_adjusted",
                               "Multiple-testing adjusted KS p-value of a feature in the last window",
                               _FEATURE, registry=registry)
        self.wasserstein = Gauge("drift_feature_wasserstein_normalized",
                                 "Wasserstein-1 distance of a feature, in reference standard deviations",
                                 _FEATURE, registry=registry)
        self.js = Gauge("drift_class_js_distance", "Jensen-Shannon distance (base 2) of predicted classes",
                        _VERSION, registry=registry)
        self.chi2_pvalue = Gauge("drift_class_chi2_pvalue", "Chi-square p-value of predicted classes",
                                 _VERSION, registry=registry)
        self.samples = Gauge("drift_window_samples", "Records evaluated in the last window",
                             _VERSION, registry=registry)
        self.window = Gauge("drift_window_index", "Index of the last evaluated window", _VERSION,
                            registry=registry)
        self.severity = Gauge("drift_alert_severity", "Open drift alert: 0 none, 1 warning, 2 critical",
                              _VERSION, registry=registry)

    def observe(self, measurement: DriftMeasurement) -> None:
        """Publish one window's statistics."""
        mv = (measurement.window.model, measurement.window.version)
        self.samples.labels(*mv).set(measurement.samples)
        self.window.labels(*mv).set(measurement.window.index)
        for f in measurement.features:
            self.psi.labels(*mv, f.name).set(f.psi)
            self.ks_pvalue.labels(*mv, f.name).set(f.ks_pvalue_adjusted)
            self.wasserstein.labels(*mv, f.name).set(f.wasserstein_normalized)
        if measurement.classes is not None:
            self.js.labels(*mv).set(measurement.classes.js_distance)
            self.chi2_pvalue.labels(*mv).set(measurement.classes.chi2_pvalue)

    def set_alert(self, state: AlertState) -> None:
        """Publish the alert state of one model version."""
        self.severity.labels(state.model, state.version).set(state.severity.rank)
