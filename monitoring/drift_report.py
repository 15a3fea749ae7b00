"""What ``release drift`` reads: a model's newest drift windows, its top drifting features and open alerts.

Read-only over the rows the drift monitor (``monitoring.monitor``) writes: ``drift_measurement`` for the
windows and ``drift_alert_state`` for the alerts. It takes the caller's session and changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from schemas.predictions import DriftMeasurement
from schemas.tables import DriftAlertStateRow, DriftMeasurementRow


def drift_report(session: Session, model: str, *, version: str | None = None, limit: int = 10,
                 top: int = 5) -> dict[str, Any]:
    """What ``release drift`` shows: the newest windows, the latest window's top features, open alerts."""
    query = select(DriftMeasurementRow).where(DriftMeasurementRow.model == model)
    if version is not None:
        query = query.where(DriftMeasurementRow.version == version)
    rows = session.exec(query.order_by(col(DriftMeasurementRow.id).desc()).limit(limit)).all()
    windows = [_window_summary(row) for row in rows]
    features: list[dict[str, Any]] = []
    if rows:
        latest = DriftMeasurement.model_validate(rows[0].measurement)
        ranked = sorted(latest.features, key=lambda f: (-f.psi, f.ks_pvalue_adjusted))[:top]
        features = [{"version": rows[0].version, "window": rows[0].window_index, **f.model_dump()} for f in ranked]
    alerts_query = (select(DriftAlertStateRow).where(DriftAlertStateRow.model == model)
                    .where(DriftAlertStateRow.severity != "none"))
    if version is not None:
        alerts_query = alerts_query.where(DriftAlertStateRow.version == version)
    alerts = [{"version": a.version, "severity": a.severity, "alert_id": a.alert_id, "since": a.updated_at}
              for a in session.exec(alerts_query.order_by(col(DriftAlertStateRow.version))).all()]
    return {"model": model, "version": version, "windows": windows, "top_features": features, "alerts": alerts}


def _window_summary(row: DriftMeasurementRow) -> dict[str, Any]:
    features = row.measurement.get("features") or []
    classes = row.measurement.get("classes") or {}
    return {"version": row.version, "window": row.window_index, "start": row.window_start,
            "end": row.window_end, "samples": row.samples, "severity": row.severity,
            "max_psi": max((f["psi"] for f in features), default=None),
            "class_js": classes.get("js_distance")}
