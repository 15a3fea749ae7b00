"""A registry seeded without pods: the read API's and pages' tests read it in milliseconds.

Rows are written through the registry's own functions (and, for drift, the rows the monitor writes), the same
shapes the controller and the monitor leave behind: digits v1 LIVE then replaced, v2 LIVE as PROD, v3 REJECTED
with a gate report against v2, and a critical drift alert on v2. The v3 description carries HTML, as an
uploader could write it, so tests can check it is escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from monitoring.profile import build_profile
from release import registry
from release.db import session_scope
from schemas.events import EventType, Topic, make_event
from schemas.predictions import ClassDrift, ClosedBy, Correction, DriftMeasurement, DriftWindow, FeatureDrift
from schemas.reports import GateReport, GateResult
from schemas.states import VersionState as S
from schemas.tables import DriftAlertStateRow, DriftMeasurementRow

MODEL = "digits"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _walk(s: Any, version: str, *states: S, reason: str = "") -> None:
    for state in states:
        registry.transition(s, model=MODEL, version=version, to=state, reason=reason if state is states[-1] else "")


def _report(version: str, *, accuracy: float, baseline: float | None, passed: bool) -> GateReport:
    gates = [GateResult(name="metric:accuracy", value=accuracy, threshold=0.5, passed=accuracy >= 0.5, bound="min")]
    if baseline is not None:
        gates.append(GateResult(name="regression:accuracy", value=accuracy, threshold=0.02, passed=passed,
                                baseline=baseline, baseline_version="2", drop=baseline - accuracy, max_drop=0.02))
    return GateReport(passed=passed, gates=tuple(gates), metrics={"accuracy": accuracy},
                      baseline_metrics=None if baseline is None else {"accuracy": baseline},
                      baseline_version=None if baseline is None else "2", latency=None, version=version)


def seed(engine: Engine, bus: Any) -> None:
    """Write the seeded registry, journal and drift rows (see the module docstring)."""
    manifest = {"name": MODEL, "labels": [str(i) for i in range(10)], "description": "baseline"}
    with session_scope(engine) as s:
        for version, description in (("1", "baseline"), ("2", "better"), ("3", HOSTILE)):
            view = registry.register_version(s, model=MODEL, version=version, digest=f"sha256:{version * 8}",
                                             artifact_uri=f"file:///b/models/digits/{version}", format="torchscript",
                                             manifest={**manifest, "version": version, "description": description},
                                             metrics={"train_eval_accuracy": 0.9}, policy={}).version
            bus.publish(make_event(EventType.MODEL_REGISTERED, {"model": MODEL, "version": version},
                                   subject=f"models/{MODEL}/versions/{version}"),
                        topic=Topic.MODEL_EVENTS, session=s)
            registry.add_gate_report(s, version_id=view.id, report=_report(
                version, accuracy={"1": 0.8, "2": 0.95, "3": 0.1}[version],
                baseline=None if version == "1" else 0.95 if version == "3" else 0.8, passed=version != "3"))
        _walk(s, "1", S.DEPLOYING, S.STAGED, S.EVALUATING, S.PROMOTING, S.LIVE)
        registry.move_alias(s, model=MODEL, alias="PROD", version="1", expected_revision=0, actor="controller",
                            reason="gates passed")
        _walk(s, "2", S.DEPLOYING, S.STAGED, S.EVALUATING, S.PROMOTING, S.LIVE)
        registry.move_alias(s, model=MODEL, alias="PROD", version="2", expected_revision=1, actor="controller",
                            reason="gates passed")
        _walk(s, "3", S.DEPLOYING, S.STAGED, S.EVALUATING, S.REJECTED, reason="regression:accuracy failed")
        _drift(s, bus)


def _drift(s: Any, bus: Any) -> None:
    rng = np.random.default_rng(0)
    reference = rng.random((300, 3))
    profile = build_profile(reference, labels=rng.integers(0, 10, 300), n_classes=10,
                            feature_names=["a", "b", "c"])
    registry.set_reference_profile(s, model=MODEL, version="2", profile=profile.to_dict())
    edges = profile.to_dict()["edges"]
    for index in range(3):
        psi = 0.05 + 0.2 * index
        start = T0 + timedelta(minutes=5 * index)
        window = DriftWindow(model=MODEL, version="2", index=index, start=start, end=start + timedelta(minutes=5),
                             records=100, closed_by=ClosedBy.COUNT)
        features = [FeatureDrift(name=n, psi=psi * (k + 1) / 3, ks_statistic=0.1, ks_pvalue=0.5,
                                 ks_pvalue_adjusted=0.5, wasserstein=0.1, wasserstein_normalized=0.1,
                                 proportions=[0.1] * (len(edges[k]) + 1)) for k, n in enumerate(["a", "b", "c"])]
        measurement = DriftMeasurement(window=window, samples=100, correction=Correction.BENJAMINI_HOCHBERG,
                                       features=features, classes=ClassDrift(chi2=1.0, chi2_pvalue=0.5, dof=9,
                                                                             js_distance=0.1, counts=[10] * 10)
                                       ).model_dump(mode="json")
        s.add(DriftMeasurementRow(model=MODEL, version="2", window_index=index, samples=100,
                                  severity="critical" if index == 2 else "none", window_start=start,
                                  window_end=start + timedelta(minutes=5), measurement=measurement))
    s.add(DriftAlertStateRow(model=MODEL, version="2", severity="critical", alert_id="digits-2-a1", state={}))
    alert = {"alert_id": "digits-2-a1", "model": MODEL, "version": "2", "kind": "fired", "severity": "critical",
             "previous_severity": "none", "window_index": 2, "reasons": ["psi c=0.55 >= 0.25"],
             "rollback_requested": False}
    bus.publish(make_event(EventType.DRIFT_ALERT, alert, subject=f"models/{MODEL}/versions/2"),
                topic=Topic.ALERTS, session=s)
