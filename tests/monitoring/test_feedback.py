"""Feedback joined with logged predictions gives live accuracy; `release drift` and `release feedback` print it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from app.cli_monitoring import register as register_commands
from monitoring.feedback import live_accuracy, post_feedback
from release import journal
from release.adapters.local_bus import LocalEventBus
from release.bootstrap import App, bootstrap
from release.db import session_factory, session_scope
from release.settings import Settings
from release.testing import MemoryStore
from release.worker import run_until_idle
from schemas.errors import BadRequest, NotFound
from schemas.events import CloudEvent, EventType, Topic, make_event
from schemas.predictions import PredictionBatch
from tests.monitoring.test_monitor import LIVE_START, Y, batch, chunks, monitor_for, register, send


def _wrong_for_every_fifth(event: CloudEvent) -> CloudEvent:
    """The same batch with every fifth prediction made wrong (so accuracy is exactly 0.8)."""
    records = PredictionBatch.model_validate(event.data).records
    changed = [r.model_copy(update={"predicted_class": (r.predicted_class or 0) + 1 if n % 5 == 0
                                    else r.predicted_class}) for n, r in enumerate(records)]
    return make_event(EventType.PREDICTIONS_LOGGED, PredictionBatch(records=changed))


def _served(engine: Engine, tmp_path: Path, rows: range) -> LocalEventBus:
    bus = LocalEventBus(session_factory=session_factory(engine))
    store = MemoryStore()
    register(engine, bus, store, "1")
    _monitor, consumer = monitor_for(engine, bus, store, tmp_path)
    send(engine, bus, _wrong_for_every_fifth(batch("1", rows)))
    run_until_idle([consumer], bus=bus)
    return bus


def test_feedback_joined_with_predictions_gives_accuracy(engine: Engine, tmp_path: Path) -> None:
    """True labels for 100 served requests, 20 of them mispredicted, give accuracy 0.8 and an event."""
    rows = range(LIVE_START, LIVE_START + 100)
    bus = _served(engine, tmp_path, rows)
    items = [{"request_id": f"1-{i}", "label": str(int(Y[i]))} for i in rows]
    result = post_feedback(engine, bus, {"model": "digits", "actor": "labeller", "items": items})
    assert result["recorded"] == 100
    assert [(a["version"], a["labelled"], a["correct"], a["accuracy"]) for a in result["accuracy"]] == [
        ("1", 100, 80, 0.8)]
    with session_scope(engine) as s:
        events = [r for r in journal.recent(s, topic=Topic.DRIFT_METRICS) if r.type == EventType.ACCURACY_MEASURED]
    assert len(events) == 1 and events[0].envelope["data"]["versions"][0]["accuracy"] == 0.8


def test_feedback_before_predictions_and_corrections_count_once(sqlite_engine: Engine, tmp_path: Path) -> None:
    """Feedback may precede its prediction batch, and a corrected label replaces the first one."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    store = MemoryStore()
    register(sqlite_engine, bus, store, "1")
    post_feedback(sqlite_engine, bus, {"model": "digits", "request_id": f"1-{LIVE_START}", "label": "wrong"})
    post_feedback(sqlite_engine, bus, {"model": "digits", "request_id": f"1-{LIVE_START}",
                                       "label": str(int(Y[LIVE_START]))})
    _monitor, consumer = monitor_for(sqlite_engine, bus, store, tmp_path)
    send(sqlite_engine, bus, batch("1", range(LIVE_START, LIVE_START + 10)))
    run_until_idle([consumer], bus=bus)
    with session_scope(sqlite_engine) as s:
        [accuracy] = live_accuracy(s, "digits")
    assert (accuracy.labelled, accuracy.correct, accuracy.accuracy) == (1, 1, 1.0)


@pytest.mark.parametrize("payload", [
    {"model": "digits", "items": [{"request_id": "r1"}]},
    {"model": "digits", "items": [{"request_id": "r1", "label": "3", "value": 3.0}]},
    {"model": "digits", "items": []},
    {"model": "digits", "items": [{"request_id": "", "label": "3"}]},
    {"items": [{"request_id": "r1", "label": "3"}]},
])
def test_invalid_feedback_is_a_bad_request(sqlite_engine: Engine, payload: dict[str, Any]) -> None:
    """Feedback without exactly one of label/value, without items, or without a model is BadRequest."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    with pytest.raises(BadRequest) as caught:
        post_feedback(sqlite_engine, bus, payload)
    assert caught.value.details["errors"]
    json.dumps(caught.value.to_dict())


def test_feedback_for_an_unknown_model_is_not_found(sqlite_engine: Engine) -> None:
    """Feedback naming a model that was never registered is refused before anything is stored."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    with pytest.raises(NotFound):
        post_feedback(sqlite_engine, bus, {"model": "ghost", "request_id": "r1", "label": "1"})


# ------------------------------------------------------------------------------------------------ CLI
def _cli(monkeypatch: pytest.MonkeyPatch, home: Path, url: str) -> Callable[[list[str]], int]:
    """Run a monitoring command as `release` would, with the parser's own `command` helper shape."""
    monkeypatch.setenv("RELEASE_HOME", str(home))
    monkeypatch.setenv("RELEASE_DB_URL", url)
    # bootstrap configures structlog process-wide onto this test's captured stderr, which closes after it.
    monkeypatch.setattr("release.bootstrap.configure_logging", lambda **_kwargs: None)
    parser = argparse.ArgumentParser(prog="release")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[App, argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    register_commands(sub, command)

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        return int(args.func(bootstrap(Settings()), args))

    return run


def test_cli_drift_and_feedback_print_and_emit_json(sqlite_engine: Engine, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`release drift` shows windows, top features and open alerts; `release feedback` takes one id or a CSV."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    store = MemoryStore()
    register(sqlite_engine, bus, store, "1")
    _monitor, consumer = monitor_for(sqlite_engine, bus, store, tmp_path)
    send(sqlite_engine, bus, *(batch("1", rows, shift=4.0) for rows in chunks(LIVE_START, LIVE_START + 400)))
    run_until_idle([consumer], bus=bus)
    run = _cli(monkeypatch, tmp_path / "home", str(sqlite_engine.url))

    assert run(["drift", "digits"]) == 0
    text = capsys.readouterr().out
    assert "top drifting features" in text and "critical" in text and "digits/1/drift/1" in text
    assert run(["drift", "digits", "--version", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["window"] for w in report["windows"]] == [1, 0]
    assert len(report["top_features"]) == 5 and report["alerts"][0]["severity"] == "critical"

    assert run(["feedback", "digits", "--request-id", f"1-{LIVE_START}", "--label", str(int(Y[LIVE_START])),
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"][0]["correct"] == 1
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("request_id,label\n" + "".join(f"1-{i},{int(Y[i])}\n"
                                                       for i in range(LIVE_START + 1, LIVE_START + 10)))
    assert run(["feedback", "digits", "--file", str(csv_file)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "recorded 9" and out.splitlines()[2].split() == ["1", "10", "10", "1.0", "0", "-"]
