"""What the dashboard and the read API show of drift: series, overlays, class mix, accuracy and alerts.

Read-only over what the drift monitor stored: ``drift_measurement`` rows (one per window), the version's
reference profile in the registry, ``drift_alert_state`` and the ``alerts`` topic of the journal. It builds on
``drift_report`` (what ``release drift`` prints), so the page, the API and the CLI agree on every number.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any

from sqlmodel import Session, col, select

from monitoring.drift_report import drift_report
from monitoring.feedback import live_accuracy
from release import registry
from schemas.errors import NotFound
from schemas.events import Topic
from schemas.policy import DriftPolicy
from schemas.tables import DriftAlertStateRow, DriftMeasurementRow, EventRecord


def drift_detail(session: Session, model: str, *, version: str | None = None, windows: int = 30,
                 top: int = 5) -> dict[str, Any]:
    """``release drift --json`` plus what charts need: PSI per feature over windows with the policy's
    thresholds, reference-vs-live histograms of the top features, the class mix, and live accuracy."""
    registry.get_model(session, model)
    report = drift_report(session, model, version=version, limit=windows, top=top)
    rows = _rows(session, model, version, windows)
    names = [f["name"] for f in report["top_features"]]
    report["psi_series"] = _psi_series(rows, names)
    report["accuracy"] = [asdict(a) for a in live_accuracy(session, model, version)]
    report["thresholds"] = _thresholds(session, model, rows[-1].version if rows else version)
    report["histograms"], report["classes"] = [], None
    if rows:
        profile = registry.get_reference_profile(session, model=model, version=rows[-1].version) or {}
        report["histograms"] = _histograms(profile, rows[-1].measurement, names)
        report["classes"] = _classes(session, profile, rows[-1])
    report["alerts"] = open_alerts(session, model=model, version=version)
    return report


def open_alerts(session: Session, *, model: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
    """Drift alerts now open (severity above none), with the reasons the latest alert event gave."""
    query = select(DriftAlertStateRow).where(DriftAlertStateRow.severity != "none")
    if model is not None:
        query = query.where(DriftAlertStateRow.model == model)
    if version is not None:
        query = query.where(DriftAlertStateRow.version == version)
    out = []
    for row in session.exec(query.order_by(col(DriftAlertStateRow.updated_at).desc())).all():
        out.append({"model": row.model, "version": row.version, "severity": row.severity, "alert_id": row.alert_id,
                    "since": row.updated_at, "reasons": _reasons(session, row.alert_id)})
    return out


def alert_events(session: Session, *, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest alert events (fired, escalated, resolved), newest first: what ``release alerts`` lists."""
    query = select(EventRecord).where(EventRecord.topic == str(Topic.ALERTS))
    if model is not None:
        query = query.where(EventRecord.model == model)
    rows = session.exec(query.order_by(col(EventRecord.seq).desc()).limit(limit)).all()
    return [{"seq": r.seq, "at": r.created_at, **{k: r.envelope.get("data", {}).get(k) for k in
             ("model", "version", "kind", "severity", "alert_id", "reasons", "rollback_requested")}} for r in rows]


def _rows(session: Session, model: str, version: str | None, limit: int) -> list[DriftMeasurementRow]:
    query = select(DriftMeasurementRow).where(DriftMeasurementRow.model == model)
    if version is not None:
        query = query.where(DriftMeasurementRow.version == version)
    rows = session.exec(query.order_by(col(DriftMeasurementRow.id).desc()).limit(limit)).all()
    return list(reversed(rows))


def _psi_series(rows: list[DriftMeasurementRow], names: list[str]) -> dict[str, Any]:
    """Window end times and, per feature, PSI at each window (None where a window did not measure it)."""
    series: dict[str, list[float | None]] = {name: [] for name in names}
    for row in rows:
        psi = {f["name"]: f["psi"] for f in row.measurement.get("features") or []}
        for name in names:
            series[name].append(psi.get(name))
    return {"windows": [{"version": r.version, "window": r.window_index, "end": r.window_end,
                         "severity": r.severity} for r in rows], "features": series}


def _thresholds(session: Session, model: str, version: str | None) -> dict[str, float]:
    policy = DriftPolicy()
    if version is not None:
        with contextlib.suppress(NotFound):
            policy = DriftPolicy.model_validate(registry.get_version(session, model, version).policy.get("drift", {}))
    return {"psi_warning": policy.psi_warning, "psi_critical": policy.psi_critical,
            "js_warning": policy.js_warning, "js_critical": policy.js_critical}


def _histograms(profile: dict[str, Any], measurement: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """Reference and live bin shares of each named feature, over the profile's PSI bins."""
    index = {name: i for i, name in enumerate(profile.get("feature_names", []))}
    live = {f["name"]: f for f in measurement.get("features") or []}
    out = []
    for name in names:
        if name not in index:
            continue
        i = index[name]
        out.append({"name": name, "edges": profile["edges"][i], "reference": profile["proportions"][i],
                    "live": live.get(name, {}).get("proportions"), "psi": live.get(name, {}).get("psi")})
    return out


def _classes(session: Session, profile: dict[str, Any], row: DriftMeasurementRow) -> dict[str, Any] | None:
    """Reference vs live predicted-class counts of the latest window, with the class names if the manifest has them."""
    reference = profile.get("class_counts")
    live = (row.measurement.get("classes") or {}).get("counts")
    if reference is None and live is None:
        return None
    try:
        labels = registry.get_version(session, row.model, row.version).manifest.get("labels") or []
    except NotFound:
        labels = []
    size = len(reference or live or [])
    names = [str(labels[i]) if i < len(labels) else str(i) for i in range(size)]
    return {"names": names, "reference": reference, "live": live,
            "js_distance": (row.measurement.get("classes") or {}).get("js_distance")}


def _reasons(session: Session, alert_id: str | None) -> list[str]:
    if alert_id is None:
        return []
    rows = session.exec(select(EventRecord).where(EventRecord.topic == str(Topic.ALERTS))
                        .order_by(col(EventRecord.seq).desc()).limit(200)).all()
    for row in rows:
        data = row.envelope.get("data", {})
        if data.get("alert_id") == alert_id:
            return [str(r) for r in data.get("reasons", [])]
    return []
