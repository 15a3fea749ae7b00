"""What a drift alert says to people: a Slack-compatible message (``text`` plus Block Kit ``blocks``).

Pure: the monitor adds these keys to the CloudEvent it posts to the policy's allow-listed webhook
(``monitoring.alert_webhooks``), so a Slack incoming webhook (or anything that reads ``text``) shows a readable
message while receivers that parse the CloudEvent keep working. Values come from the alert, never from a
manifest, and are cut to Slack's limits.
"""

from __future__ import annotations

from typing import Any

#: Slack's limit on a section's text.
MAX_SECTION = 3000
EMOJI = {"critical": ":red_circle:", "warning": ":large_yellow_circle:", "none": ":white_check_mark:"}


def summary(alert: dict[str, Any]) -> str:
    """One line: ``Drift CRITICAL on digits v2 (fired, window 3)``."""
    kind = alert.get("kind", "fired")
    word = "resolved" if kind == "resolved" else str(alert.get("severity", "")).upper()
    return (f"Drift {word} on {alert.get('model')} v{alert.get('version')} "
            f"({kind}, window {alert.get('window_index')})")


def slack_message(alert: dict[str, Any], *, console_url: str = "") -> dict[str, Any]:
    """``text`` (the notification line) and ``blocks`` for the alert's ``data``; links to the dashboard if known."""
    line = summary(alert)
    reasons = [str(r) for r in alert.get("reasons") or []]
    detail = "\n".join(f"• {r}" for r in reasons) or "no reason given"
    if alert.get("rollback_requested"):
        detail += "\n*PROD rollback requested* (the policy's rollback_on_critical)."
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": f"{EMOJI.get(str(alert.get('severity')), '')} *{line}*"[:MAX_SECTION]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": detail[:MAX_SECTION]}},
        {"type": "context", "elements": [{"type": "mrkdwn",
                                          "text": f"alert `{alert.get('alert_id')}` · `release alerts "
                                                  f"{alert.get('model')}`"}]},
    ]
    if console_url:
        link = f"{console_url.rstrip('/')}/ui/models/{alert.get('model')}"
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open the dashboard"}, "url": link}]})
    return {"text": line, "blocks": blocks}


def webhook_payload(event: dict[str, Any], *, console_url: str = "") -> dict[str, Any]:
    """The alert's CloudEvent (as JSON) with the Slack message's ``text`` and ``blocks`` beside its fields."""
    return {**event, **slack_message(event.get("data") or {}, console_url=console_url)}
