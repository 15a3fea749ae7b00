"""Read models of the registry for the read API, the dashboard and the CLI: one answer to "what is deployed?".

Each function takes the caller's session, changes nothing and returns plain data (dicts of strings, numbers,
dataclass views and datetimes) that ``app.output.plain`` turns into JSON. They compose the registry's own
lookups, so the page and ``release show``/``release versions`` read the same rows the same way.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, func, select

from release import registry
from release.registry import PROD, STG, VersionView
from schemas.states import SETTLED, VersionState
from schemas.tables import AuditEntry, CanaryStepRecord, Deployment, ModelVersion

#: How many lines of a pod's log a version page shows.
LOG_TAIL_LINES = 40
#: Audit actions that make up a model's timeline besides alias moves.
TIMELINE_ACTIONS = ("version.registered", "alias.moved", "version.promoted", "version.rolled_back",
                    "version.retried", "version.state_changed")


def state_counts(session: Session, model: str) -> dict[str, int]:
    """How many versions of ``model`` are in each state (states with none are left out)."""
    model_row = registry.get_model(session, model)
    rows = session.exec(select(ModelVersion.state, func.count()).where(ModelVersion.model_id == model_row.id)
                        .group_by(col(ModelVersion.state))).all()
    return {str(state): int(count) for state, count in rows}


def models_overview(session: Session) -> list[dict[str, Any]]:
    """Every model with its PROD and STG versions, newest version and state counts (the home page's rows)."""
    out = []
    for summary in registry.list_models(session):
        out.append({"name": summary.name, "versions": summary.versions, "latest": summary.latest,
                    "prod": summary.aliases.get(PROD), "stg": summary.aliases.get(STG),
                    "aliases": summary.aliases, "states": state_counts(session, summary.name),
                    "created_at": summary.created_at})
    return out


def model_detail(session: Session, model: str) -> dict[str, Any]:
    """A model's aliases, state counts, newest versions in flight and its canary routes."""
    aliases = registry.list_aliases(session, model)
    versions = registry.list_versions(session, model, newest_first=True)
    in_flight = [version_row(v) for v in versions if v.state not in SETTLED]
    return {"name": model, "aliases": aliases, "states": state_counts(session, model),
            "versions": len(versions), "latest": versions[0].version if versions else None,
            "in_flight": in_flight, "routes": registry.route_weights(session, model),
            "canary": canary_progress(session, model)}


def version_row(view: VersionView) -> dict[str, Any]:
    """One versions-table row: the state, its reason and what the uploader wrote (untrusted text)."""
    return {"version": view.version, "seq": view.seq, "state": str(view.state), "reason": view.state_reason,
            "intent": view.intent, "digest": view.digest, "format": view.format, "metrics": view.metrics,
            "description": str(view.manifest.get("description", "")), "labels": view.manifest.get("labels") or [],
            "created_at": view.created_at, "updated_at": view.updated_at}


def versions_page(session: Session, model: str, *, state: VersionState | None = None, limit: int = 50,
                  offset: int = 0) -> dict[str, Any]:
    """A page of a model's versions, newest first, optionally of one state, with the total that matched."""
    registry.get_model(session, model)
    views = registry.list_versions(session, model, state=state, limit=limit, offset=offset, newest_first=True)
    total = sum(n for s, n in state_counts(session, model).items() if state is None or s == str(state))
    return {"model": model, "state": str(state) if state else None, "limit": limit, "offset": offset,
            "total": total, "items": [version_row(v) for v in views]}


def version_detail(session: Session, model: str, ref: str) -> dict[str, Any]:
    """A version (or an alias): manifest, state, gate report beside the PROD it was measured against,
    deployment with its pod-log tail, and its history."""
    view = registry.resolve(session, model, ref)
    report = registry.latest_gate_report(session, view.id)
    deployment = registry.get_deployment(session, view.id)
    history = [e for e in registry.audit_log(session, model=model, limit=1000) if e.version == view.version]
    aliases = [a.name for a in registry.list_aliases(session, model) if a.version == view.version]
    return {"model": model, "version": view.version, "aliases": aliases, **version_row(view),
            "manifest": view.manifest, "policy": view.policy, "artifact_uri": view.artifact_uri,
            "gate_report": report, "comparison": gate_comparison(report),
            "deployment": _deployment(deployment), "history": [_audit(e) for e in history]}


def gate_comparison(report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The gate report as rows of candidate vs the PROD it was measured against: value, baseline, delta,
    threshold and pass/fail per gate (the question people ask of a gate report)."""
    if not report:
        return []
    baseline_metrics = report.get("baseline_metrics") or {}
    rows = []
    for gate in report.get("gates", []):
        metric = str(gate["name"]).partition(":")[2]
        baseline = gate.get("baseline", baseline_metrics.get(metric))
        value = gate.get("value")
        delta = value - baseline if isinstance(value, int | float) and isinstance(baseline, int | float) else None
        rows.append({"gate": gate["name"], "candidate": value, "prod": baseline,
                     "prod_version": gate.get("baseline_version", report.get("baseline_version")),
                     "delta": delta, "threshold": gate.get("threshold"), "bound": gate.get("bound"),
                     "passed": bool(gate.get("passed")), "detail": gate.get("detail", "")})
    return rows


def canary_progress(session: Session, model: str) -> dict[str, Any] | None:
    """The model's newest canary, running or finished: its version, route weight, budgets, and every step as it
    ran (``progress``: weight, phase, and what the candidate pods served once the step was judged)."""
    model_row = registry.get_model(session, model)
    newest = session.exec(select(CanaryStepRecord, ModelVersion)
                          .join(ModelVersion, col(ModelVersion.id) == col(CanaryStepRecord.version_id))
                          .where(ModelVersion.model_id == model_row.id)
                          .order_by(col(CanaryStepRecord.id).desc())).first()
    if newest is None:
        return None
    last, version = newest
    rows = session.exec(select(CanaryStepRecord).where(CanaryStepRecord.version_id == last.version_id)
                        .where(CanaryStepRecord.attempt == last.attempt)
                        .order_by(col(CanaryStepRecord.step))).all()
    rollout = version.policy.get("rollout", {})
    return {"version": version.version, "state": str(version.state), "step": last.step,
            "weight": registry.route_weights(session, model).get(version.version, 0),
            "steps": [int(s.get("weight", 0)) for s in rollout.get("steps", [])],
            "max_error_rate": rollout.get("max_error_rate"), "max_p99_ms": rollout.get("max_p99_ms"),
            "progress": [canary_step_row(r) for r in rows]}


def canary_step_row(row: CanaryStepRecord) -> dict[str, Any]:
    """One canary step as the strip shows it; the counts are empty while its watch window is open."""
    result = row.result or {}
    phase = "watching" if row.result is None else ("passed" if result.get("ok") else "failed")
    return {"step": row.step, "weight": row.weight, "watch_s": row.watch_s, "started_at": row.started_at,
            "judged_at": row.judged_at, "phase": phase, "requests": result.get("requests"),
            "errors": result.get("errors"), "error_rate": result.get("error_rate"), "p99_ms": result.get("p99_ms"),
            "judged": result.get("judged"), "breaches": list(result.get("breaches") or [])}


def aliases_with_audit(session: Session, model: str, *, limit: int = 200) -> dict[str, Any]:
    """Every alias of ``model`` with the audited moves that brought it there, newest last."""
    moves = [_audit(e) for e in registry.audit_log(session, model=model, limit=limit) if e.action == "alias.moved"]
    return {"model": model, "aliases": registry.list_aliases(session, model), "moves": moves}


def timeline(session: Session, model: str, *, limit: int = 200) -> list[dict[str, Any]]:
    """The model's audit trail on one time axis: registrations, state moves, alias moves, operations."""
    registry.get_model(session, model)
    return [_audit(e) for e in registry.audit_log(session, model=model, limit=limit)]


def _deployment(row: Deployment | None) -> dict[str, Any] | None:
    if row is None:
        return None
    lines = (row.log_excerpt or "").splitlines()
    return {"backend": row.backend, "status": row.status, "endpoints": list(row.endpoints),
            "updated_at": row.updated_at, "log_tail": lines[-LOG_TAIL_LINES:]}


def _audit(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at, "actor": entry.actor, "action": entry.action,
            "version": entry.version, "alias": entry.alias, "from_version": entry.from_version,
            "to_version": entry.to_version, "reason": entry.reason, "details": entry.details}
