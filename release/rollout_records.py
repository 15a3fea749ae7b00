"""What the controller records while rolling a version out: gate reports, deployment rows, canary routes.

These are plain appends and lookups keyed by a version, with no state machine and no alias revision to guard,
so they live apart from the registry's versions and aliases. Like the registry they take ``session`` and
never commit: the caller's transaction holds them together with the state change they belong to.
``release.registry`` re-exports every function here, so callers keep using ``registry.X``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from schemas.reports import GateReport
from schemas.tables import Deployment, GateReportRow, RouteWeight, utcnow


# ----------------------------------------------------------------------------------------------- gate reports
def add_gate_report(session: Session, *, version_id: int, report: GateReport) -> None:
    """Store one gate report for a version, in its wire shape (``schemas.reports``)."""
    session.add(GateReportRow(version_id=version_id, passed=report.passed, report=report.model_dump(mode="json")))


def load_gate_report(session: Session, version_id: int) -> GateReport | None:
    """The newest gate report of a version, validated on the way out of storage."""
    row = session.exec(select(GateReportRow).where(GateReportRow.version_id == version_id)
                       .order_by(col(GateReportRow.id).desc())).first()
    return None if row is None else GateReport.model_validate(row.report)


def latest_gate_report(session: Session, version_id: int) -> dict[str, Any] | None:
    """The newest gate report of a version in its wire shape, as ``release show --json`` prints it (validated)."""
    report = load_gate_report(session, version_id)
    return None if report is None else report.model_dump(mode="json")


# ----------------------------------------------------------------------------------------------- deployments

def record_deployment(session: Session, *, version_id: int, backend: str, status: str,
                      endpoints: Sequence[str] = (), log_excerpt: str = "") -> None:
    """Create or update the deployment row of a version on a backend."""
    row = session.exec(select(Deployment).where(Deployment.version_id == version_id)
                       .where(Deployment.backend == backend)).first()
    if row is None:
        row = Deployment(version_id=version_id, backend=backend, status=status)
    row.status = status
    row.endpoints = list(endpoints)
    row.log_excerpt = log_excerpt
    row.updated_at = utcnow()
    session.add(row)


def get_deployment(session: Session, version_id: int) -> Deployment | None:
    """The newest deployment row of a version."""
    return session.exec(select(Deployment).where(Deployment.version_id == version_id)
                        .order_by(col(Deployment.updated_at).desc())).first()


# ----------------------------------------------------------------------------------------------- routes
def set_route_weight(session: Session, *, model: str, version: str, weight: int) -> None:
    """Send ``weight`` percent of the model's PROD traffic to ``version``; 0 removes the route."""
    row = session.exec(select(RouteWeight).where(RouteWeight.model == model)
                       .where(RouteWeight.version == version)).first()
    if weight <= 0:
        if row is not None:
            session.delete(row)
        return
    row = row or RouteWeight(model=model, version=version)
    row.weight = min(100, weight)
    row.updated_at = utcnow()
    session.add(row)


def route_weights(session: Session, model: str) -> dict[str, int]:
    """Canary weights of a model by version."""
    return {r.version: r.weight for r in session.exec(select(RouteWeight).where(RouteWeight.model == model)).all()}


def clear_routes(session: Session, model: str) -> None:
    """Drop every canary route of a model (PROD takes all traffic again)."""
    for row in session.exec(select(RouteWeight).where(RouteWeight.model == model)).all():
        session.delete(row)
