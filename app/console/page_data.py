"""What each dashboard page shows, gathered from the same read functions the read API answers with.

A page is rendered from these dicts on the server, and its sections are re-rendered (fragments) when the
event stream says something changed, so the page and ``GET /api/v1/...`` always show the same numbers.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.console import charts
from app.output import plain
from monitoring import drift_views
from release import console_reads, journal_reads, registry
from release.registry import PROD
from schemas.states import VersionState

#: How many of the newest versions the model page shows with their gate reports.
VERSIONS_SHOWN = 25
#: How many recent events the home page's feed starts with.
FEED_SIZE = 20
RETRYABLE = frozenset({VersionState.REJECTED, VersionState.FAILED, VersionState.ROLLED_BACK,
                       VersionState.RETIRED})


def home(session: Session) -> dict[str, Any]:
    """Every model with PROD and STG, state counts and open alerts, and the newest events for the live feed."""
    events = [journal_reads.event_view(r) for r in journal_reads.before(session, limit=FEED_SIZE)]
    return {"models": console_reads.models_overview(session), "alerts": drift_views.open_alerts(session),
            "events": list(reversed(events))}


def model_page(session: Session, model: str) -> dict[str, Any]:
    """Everything the model page shows: summary, versions with gate comparisons, drift, alerts, timeline."""
    detail = console_reads.model_detail(session, model)
    prod = next((a.version for a in detail["aliases"] if a.name == PROD), None)
    versions = [console_reads.version_detail(session, model, row["version"]) for row in
                console_reads.versions_page(session, model, limit=VERSIONS_SHOWN)["items"]]
    for version in versions:
        version["actions"] = _actions(version, prod)
    drift = drift_views.drift_detail(session, model)
    moves = [{"at": m["at"], "text": f"{m['alias']} → {m['to_version']}"}
             for m in console_reads.aliases_with_audit(session, model)["moves"]]
    chart_data = plain({"series": drift["psi_series"], "thresholds": drift["thresholds"], "moves": moves})
    return {"chart_data": chart_data, "model": model, "detail": detail, "prod": prod, "versions": versions,
            "traffic": charts.traffic_split(prod, detail["canary"]), "rollback": _rollback(session, model, prod),
            "drift": drift, "drift_charts": _drift_charts(drift), "alerts": drift["alerts"],
            "timeline": timeline(session, model)}


def version_page(session: Session, model: str, ref: str) -> dict[str, Any]:
    """One version: its manifest, gate comparison, deployment and log tail, history."""
    version = console_reads.version_detail(session, model, ref)
    prod = registry.find_alias(session, model, PROD)
    version["actions"] = _actions(version, prod.version if prod else None)
    return {"model": model, "version": version}


def timeline(session: Session, model: str) -> list[dict[str, Any]]:
    """Audit entries and alert events of one model on one time axis, newest first."""
    entries = [{"at": e["at"], "kind": e["action"], "version": e["version"] or e["to_version"],
                "actor": e["actor"], "text": _audit_text(e)} for e in console_reads.timeline(session, model)]
    for alert in drift_views.alert_events(session, model=model):
        entries.append({"at": alert["at"], "kind": f"drift.{alert['kind']}", "version": alert["version"],
                        "actor": "drift-monitor",
                        "text": f"{alert['severity']}: {'; '.join(alert['reasons'] or [])}"})
    return sorted(entries, key=lambda e: e["at"], reverse=True)


def _audit_text(entry: dict[str, Any]) -> str:
    if entry["action"] == "alias.moved":
        return f"{entry['alias']}: {entry['from_version'] or '-'} → {entry['to_version'] or '-'} ({entry['reason']})"
    details = entry.get("details") or {}
    moved = f"{details.get('from', '')} → {details.get('to', '')} " if details.get("to") else ""
    return f"{moved}{entry['reason']}".strip()


def _actions(version: dict[str, Any], prod: str | None) -> list[dict[str, str]]:
    """The writes that make sense for a version, each with the confirmation naming what moves where."""
    state = VersionState(version["state"])
    actions = []
    if version["version"] != prod and state in (VersionState.LIVE, VersionState.STAGED, VersionState.EVALUATING,
                                                VersionState.RETIRED, VersionState.ROLLED_BACK):
        actions.append({"action": "promote", "confirm": f"PROD: {prod or '-'} → {version['version']}"})
    if state in RETRYABLE:
        actions.append({"action": "retry",
                        "confirm": f"{version['version']}: {state} → DEPLOYING (gates and canary again)"})
    return actions


def _rollback(session: Session, model: str, prod: str | None) -> dict[str, str] | None:
    """Where a rollback would put PROD: the version the latest PROD move came from."""
    if prod is None:
        return None
    moves = [m for m in console_reads.aliases_with_audit(session, model)["moves"] if m["alias"] == PROD]
    previous = next((m["from_version"] for m in reversed(moves) if m["to_version"] == prod and m["from_version"]),
                    None)
    if previous is None:
        return None
    return {"from": prod, "to": previous, "confirm": f"PROD: {prod} → {previous}"}


def _drift_charts(drift: dict[str, Any]) -> dict[str, Any]:
    histograms = [{"name": h["name"], "psi": h["psi"],
                   **charts.overlay(h["reference"], h["live"], charts.bin_names(h["edges"]))}
                  for h in drift["histograms"]]
    classes = drift["classes"]
    mix = None
    if classes is not None:
        mix = {"js_distance": classes["js_distance"],
               **charts.overlay(charts.shares(classes["reference"]), charts.shares(classes["live"]),
                                classes["names"])}
    return {"histograms": histograms, "classes": mix}
