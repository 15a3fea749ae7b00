"""Alerts reach people: a Slack-compatible webhook message, `release alerts`, and a Cloud Monitoring policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.cli import main as release_main
from monitoring.alert_messages import slack_message, webhook_payload
from monitoring.metrics import DriftMetrics
from release.bootstrap import App

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERT = {"alert_id": "digits-2-a1", "model": "digits", "version": "2", "kind": "fired", "severity": "critical",
         "previous_severity": "none", "window_index": 3, "reasons": ["psi x3=6.3 >= 0.25"],
         "rollback_requested": True}


def test_slack_message_has_text_blocks_and_a_dashboard_link() -> None:
    """The message names model, version and severity in `text`, lists reasons in blocks, links the dashboard."""
    message = slack_message(ALERT, console_url="https://release.example.com/")
    assert message["text"] == "Drift CRITICAL on digits v2 (fired, window 3)"
    sections = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
    assert "psi x3=6.3 >= 0.25" in sections[1] and "rollback requested" in sections[1]
    (button,) = message["blocks"][-1]["elements"]
    assert button["url"] == "https://release.example.com/ui/models/digits"
    assert all(b["type"] != "actions" for b in slack_message(ALERT)["blocks"])


def test_webhook_payload_keeps_the_cloudevent() -> None:
    """Receivers that parse the CloudEvent still find its fields; Slack reads `text` and `blocks`."""
    event = {"id": "e1", "type": "dev.modelrelease.drift.alert.v1", "data": ALERT}
    payload = webhook_payload(event)
    assert payload["id"] == "e1" and payload["data"] == ALERT and payload["text"].startswith("Drift CRITICAL")


def test_release_alerts_lists_open_alerts_and_events(seeded: App, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`release alerts digits --json` prints the open alert with its reasons and the alert events."""
    monkeypatch.setenv("RELEASE_HOME", str(seeded.settings.home))
    capsys.readouterr()
    assert release_main(["alerts", "digits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["open"][0]["severity"] == "critical" and report["open"][0]["reasons"] == ["psi c=0.55 >= 0.25"]
    assert report["events"][0]["kind"] == "fired"
    assert release_main(["alerts"]) == 0
    assert "open alerts" in capsys.readouterr().out


def test_alert_policy_watches_metrics_the_monitor_exports() -> None:
    """The Cloud Monitoring policy queries gauges DriftMetrics really exports, and setup.sh creates it."""
    policy = json.loads((DEPLOY / "alerting" / "drift-alert-policy.json").read_text())
    registry = CollectorRegistry()
    DriftMetrics(registry)
    exported = {metric.name for metric in registry.collect()}
    queries = [c["conditionPrometheusQueryLanguage"]["query"] for c in policy["conditions"]]
    assert any("drift_alert_severity" in q for q in queries) and any("drift_feature_psi" in q for q in queries)
    assert {"drift_alert_severity", "drift_feature_psi"} <= exported
    setup = (DEPLOY / "gcp" / "setup.sh").read_text()
    assert "deploy/alerting/drift-alert-policy.json" in setup and "\n  create_alert_policy\n" in setup
