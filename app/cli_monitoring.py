"""``release drift``, ``release alerts`` and ``release feedback``: the monitoring commands, added by ``register``.

Kept apart from ``app.cli`` so that the core commands start without importing the numeric stack: monitoring
(numpy, SciPy) is imported when one of these commands runs.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.operator import whoami
from app.output import emit, plain, table
from release.bootstrap import App
from release.db import session_scope

Command = Callable[[str, Callable[[App, argparse.Namespace], int], str], argparse.ArgumentParser]


def register(_sub: argparse._SubParsersAction[argparse.ArgumentParser], command: Command) -> None:
    """Add ``drift``, ``alerts`` and ``feedback`` through ``build_parser``'s ``command`` helper (so they get
    ``--json``)."""
    p = command("drift", cmd_drift, "drift windows, top drifting features and open alerts of a model")
    p.add_argument("name")
    p.add_argument("--version", help="a version or alias; default: every version")
    p.add_argument("--limit", type=int, default=10, help="how many recent windows")
    p = command("alerts", cmd_alerts, "open drift alerts and the newest alert events (of one model or all)")
    p.add_argument("name", nargs="?", help="one model; default: every model")
    p.add_argument("--limit", type=int, default=20, help="how many recent alert events")
    p = command("feedback", cmd_feedback, "record ground truth for served requests and show live accuracy")
    p.add_argument("name")
    p.add_argument("--request-id")
    truth = p.add_mutually_exclusive_group()
    truth.add_argument("--label", help="the true class (name or index)")
    truth.add_argument("--value", type=float, help="the true value (regression)")
    p.add_argument("--file", type=Path, help="CSV with a header: request_id and label (or value) columns")
    p.add_argument("--actor", default=None, help="who reports it (default: the current user)")


def cmd_drift(app: App, args: argparse.Namespace) -> int:
    """Show the latest drift windows, the top drifting features and open alerts."""
    from monitoring.drift_report import drift_report
    from monitoring.feedback import live_accuracy
    from release import registry

    with session_scope(app.engine) as s:
        version = registry.resolve(s, args.name, args.version).version if args.version else None
        report = drift_report(s, args.name, version=version, limit=args.limit)
        report["accuracy"] = [plain(a) for a in live_accuracy(s, args.name, version)]
    emit(args, report, _render_drift)
    return 0


def _render_drift(report: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    windows = [{**w, "max_psi": fmt(w["max_psi"]), "class_js": fmt(w["class_js"])} for w in report["windows"]]
    features = [{**f, **{k: fmt(f[k]) for k in ("psi", "ks_pvalue_adjusted", "wasserstein_normalized")}}
                for f in report["top_features"]]
    accuracy = [{**a, "accuracy": fmt(a["accuracy"]), "mae": fmt(a["mae"])} for a in report["accuracy"]]
    return "\n\n".join([
        "windows (newest first)\n" + table(windows, ["version", "window", "end", "samples", "severity",
                                                      "max_psi", "class_js"]),
        "top drifting features (latest window)\n" + table(features, ["version", "window", "name", "psi",
                                                                      "ks_pvalue_adjusted",
                                                                      "wasserstein_normalized"]),
        "open alerts\n" + table(report["alerts"], ["version", "severity", "alert_id", "since"]),
        "live accuracy\n" + table(accuracy, ["version", "labelled", "correct", "accuracy", "valued", "mae"]),
    ])


def cmd_alerts(app: App, args: argparse.Namespace) -> int:
    """Open drift alerts with their reasons, then the newest alert events (what the dashboard shows)."""
    from monitoring.drift_views import alert_events, open_alerts

    with session_scope(app.engine) as s:
        report = {"open": open_alerts(s, model=args.name),
                  "events": alert_events(s, model=args.name, limit=args.limit)}

    def render(r: dict[str, Any]) -> str:
        opened = [{**a, "reasons": "; ".join(a["reasons"])[:80]} for a in r["open"]]
        events = [{**e, "reasons": "; ".join(e["reasons"] or [])[:60]} for e in r["events"]]
        return "\n\n".join([
            "open alerts\n" + table(opened, ["model", "version", "severity", "since", "reasons"]),
            "recent alert events (newest first)\n" + table(events, ["at", "model", "version", "kind", "severity",
                                                                     "reasons"])])

    emit(args, report, render)
    return 0


def cmd_feedback(app: App, args: argparse.Namespace) -> int:
    """Record ground truth (one request, or a CSV of them) and print the model's live accuracy."""
    from monitoring.feedback import post_feedback
    from schemas.errors import BadRequest

    if args.file is not None:
        items = _read_csv(args.file)
    elif args.request_id and (args.label is not None or args.value is not None):
        truth = {"label": args.label} if args.label is not None else {"value": args.value}
        items = [{"request_id": args.request_id, **truth}]
    else:
        raise BadRequest("give --request-id with --label or --value, or --file CSV",
                         hint="See `release feedback --help`.")
    result = post_feedback(app.engine, app.bus, {"model": args.name, "actor": args.actor or whoami(),
                                                 "items": items})
    emit(args, result, lambda r: f"recorded {r['recorded']}\n"
          + table(r["accuracy"], ["version", "labelled", "correct", "accuracy", "valued", "mae"]))
    return 0


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of ``request_id,label`` (or ``request_id,value``); empty cells are left out (validation parses values)."""
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(handle)]
