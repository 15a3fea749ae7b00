"""Reading pod and container statuses (the API's own JSON) into the lines of a rollout failure's excerpt. Pure."""

from __future__ import annotations

from typing import Any


def conditions(items: list[dict[str, Any]] | None) -> list[str]:
    """A Deployment's or pod's conditions, one line each."""
    return [
        f"{c.get('type')}={c.get('status')}"
        + (f" ({c['reason']})" if c.get("reason") else "")
        + (f": {c['message']}" if c.get("message") else "")
        for c in items or []
    ]


def container_state(status: dict[str, Any]) -> str:
    """One line on a container: waiting, terminated or running, and its restarts."""
    state = status.get("state") or {}
    restarts = status.get("restartCount", 0)
    if "waiting" in state:
        detail = state["waiting"]
        text = f"waiting {detail.get('reason', '')}: {detail.get('message', '')}".rstrip(": ")
    elif "terminated" in state:
        detail = state["terminated"]
        text = f"terminated {detail.get('reason', '')} exit {detail.get('exitCode')}"
    else:
        text = "running" + ("" if status.get("ready") else " (not ready)")
    return f"container {status.get('name')}: {text}, restarts {restarts}"


def exit_codes(status: dict[str, Any]) -> list[int]:
    """The exit codes a container's current and last run ended with."""
    runs = (status.get("state") or {}, status.get("lastState") or {})
    return [int(run["terminated"]["exitCode"]) for run in runs if "exitCode" in run.get("terminated", {})]


def worth_a_log(status: dict[str, Any]) -> bool:
    """A container that ran and is not (or no longer) fine; one still being created has no log yet."""
    state = status.get("state") or {}
    if status.get("ready") or state.get("terminated", {}).get("reason") == "Completed":
        return False
    return "running" in state or "terminated" in state or bool(status.get("restartCount"))
