"""The drift monitor on the local bus over SQLite and PostgreSQL: windows, alerts, rollback, de-dup, restarts."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_digits
from sqlalchemy.engine import Engine
from sqlmodel import func, select

from monitoring.alert_webhooks import post_json
from monitoring.metrics import DriftMetrics
from monitoring.monitor import MONITOR_SUBSCRIPTION, DriftMonitor, subscriptions
from release import journal, registry
from release.adapters.local_bus import LocalEventBus
from release.db import session_factory, session_scope
from release.ports import SubscriptionSpec
from release.testing import MemoryStore
from release.worker import Consumer, run_until_idle
from schemas.events import CloudEvent, EventType, ModelRegisteredData, Topic, make_event
from schemas.predictions import PredictionBatch, PredictionRecord
from schemas.tables import PredictionLogRow
from tests.release.controller_harness import build, end_state

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
_DIGITS = load_digits()
# Shuffled once: the dataset is ordered by writer, so a plain head/tail split is a real population shift.
_ORDER = np.random.default_rng(0).permutation(len(_DIGITS.target))
X: np.ndarray = _DIGITS.data[_ORDER]  # [1797, 64], pixel intensities 0..16
Y: np.ndarray = _DIGITS.target[_ORDER]
REFERENCE = slice(0, 1000)
LIVE_START = 1000
DRIFT = {"window_size": 200, "min_samples": 100, "consecutive_windows": 2, "rollback_on_critical": True,
         "webhook_url": "http://hooks.test/drift"}


# ------------------------------------------------------------------------------------------------ helpers
def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def upload(store: MemoryStore, version: str, model: str = "digits") -> tuple[dict[str, Any], str]:
    """Put a digits artifact with a reference sample in the bucket; returns its manifest and URI."""
    files = {"model.pt": b"weights are not read by the monitor",
             "reference.npz": _npz(x=X[REFERENCE], y=Y[REFERENCE])}
    prefix = f"models/{model}/{version}/"
    for name, data in files.items():
        store.write(prefix + name, data)
    manifest = {"name": model, "version": version, "format": "torchscript", "handler": "tabular",
                "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
                "labels": [str(i) for i in range(10)], "reference": "reference.npz"}
    return manifest, f"{store.uri}/{prefix}"


def register(engine: Engine, bus: LocalEventBus, store: MemoryStore, version: str,
             drift: dict[str, Any] | None = None, *, announce: bool = False) -> None:
    """Register a digits version with a drift policy; ``announce`` publishes model.registered for a controller."""
    manifest, uri = upload(store, version)
    with session_scope(engine) as s:
        outcome = registry.register_version(s, model="digits", version=version, digest=f"sha256:{version * 8}",
                                            artifact_uri=uri, format="torchscript", manifest=manifest,
                                            policy={"drift": drift if drift is not None else DRIFT})
        if announce:
            data = ModelRegisteredData(model="digits", version=version, version_id=outcome.version.id,
                                       digest=outcome.version.digest, artifact_uri=uri, format="torchscript")
            bus.publish(make_event(EventType.MODEL_REGISTERED, data, event_id=f"reg-{version}"),
                        topic=Topic.MODEL_EVENTS, session=s)


def batch(version: str, rows: range, *, shift: float = 0.0, event_id: str | None = None) -> CloudEvent:
    """A predictions.logged event for digits rows ``rows``, brightened by ``shift`` (clipped to 16)."""
    records = [PredictionRecord(request_id=f"{version}-{i}", model="digits", version=version,
                                received_at=T0 + timedelta(seconds=i), completed_at=T0 + timedelta(seconds=i),
                                latency_ms=1.0, inputs=np.clip(X[i] + shift, 0, 16).tolist(),
                                predicted_class=int(Y[i]))
               for i in rows]
    return make_event(EventType.PREDICTIONS_LOGGED, PredictionBatch(records=records), event_id=event_id)


def send(engine: Engine, bus: LocalEventBus, *events: CloudEvent) -> None:
    """Publish events on prediction-logs the way the router does."""
    with session_scope(engine) as s:
        for event in events:
            bus.publish(event, topic=Topic.PREDICTION_LOGS, session=s)


def chunks(start: int, stop: int, size: int = 100) -> list[range]:
    """Consecutive row ranges, as the router's batches would cut them."""
    return [range(i, min(i + size, stop)) for i in range(start, stop, size)]


def types(engine: Engine, topic: Topic | None = None) -> list[str]:
    """Journalled event types, short form, oldest first."""
    with session_scope(engine) as s:
        return [r.type.removeprefix("dev.modelrelease.").removesuffix(".v1")
                for r in journal.recent(s, limit=10_000, topic=topic)]


class Hooks:
    """A webhook sender that records instead of posting."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, payload: dict[str, Any]) -> None:
        self.calls.append((url, payload))


def monitor_for(engine: Engine, bus: LocalEventBus, store: MemoryStore, tmp_path: Path,
                hooks: Hooks | None = None, metrics: DriftMetrics | None = None,
                webhook_prefixes: tuple[str, ...] = ("http://hooks.test/",)) -> tuple[DriftMonitor, Consumer]:
    """A monitor (allowing the test's webhook host), its subscription, and a consumer over it."""
    for spec in subscriptions():
        bus.ensure_subscription(spec)
    monitor = DriftMonitor(engine=engine, bus=bus, store=store, cache_dir=tmp_path / "artifacts",
                           webhook=hooks or Hooks(), metrics=metrics, webhook_prefixes=webhook_prefixes)
    return monitor, Consumer(bus=bus, subscription=MONITOR_SUBSCRIPTION, handler=monitor.handle)


@pytest.fixture
def setup(engine: Engine, tmp_path: Path) -> tuple[Engine, LocalEventBus, MemoryStore]:
    """A migrated store (SQLite, then PostgreSQL), its local bus and an in-memory bucket."""
    return engine, LocalEventBus(session_factory=session_factory(engine)), MemoryStore()


# ------------------------------------------------------------------------------------------------ tests
def test_reference_traffic_is_measured_without_alerts(setup: Any, tmp_path: Path) -> None:
    """Held-out digits from the reference distribution give drift.measured events and gauges, and no alert."""
    engine, bus, store = setup
    register(engine, bus, store, "1")
    gauges = CollectorRegistry()
    _monitor, consumer = monitor_for(engine, bus, store, tmp_path, metrics=DriftMetrics(gauges))
    send(engine, bus, *(batch("1", rows) for rows in chunks(LIVE_START, len(X))))
    run_until_idle([consumer], bus=bus)
    assert types(engine, Topic.DRIFT_METRICS) == ["drift.measured"] * 3
    assert types(engine, Topic.ALERTS) == []
    labels = {"model": "digits", "version": "1"}
    assert gauges.get_sample_value("drift_window_index", labels) == 2
    assert gauges.get_sample_value("drift_alert_severity", labels) == 0
    with session_scope(engine) as s:
        assert registry.get_reference_profile(s, model="digits", version="1") is not None
        assert s.exec(select(func.count()).select_from(PredictionLogRow)).one() == len(X) - LIVE_START


@pytest.mark.parametrize("allowed", [("http://hooks.test/",), ()], ids=["webhook-allowed", "webhook-not-allowed"])
def test_brightness_shift_alerts_and_rolls_prod_back(db: tuple[Engine, str], tmp_path: Path,
                                                     allowed: tuple[str, ...]) -> None:
    """Shifted digits on PROD raise a critical alert after two windows; the controller puts PROD back on 1; the
    policy's webhook is called only when the operator's allow-list admits it."""
    _engine, url = db
    engine, bus, controller, controller_consumer = build(url)
    bus.ensure_subscription(SubscriptionSpec(name="rollbacks", topic=Topic.ALERTS))
    rollbacks = Consumer(bus=bus, subscription="rollbacks", handler=controller.react_to_alert)
    store = MemoryStore()
    hooks = Hooks()
    monitor, consumer = monitor_for(engine, bus, store, tmp_path, hooks, webhook_prefixes=allowed)
    register(engine, bus, store, "1", announce=True)
    run_until_idle([controller_consumer], bus=bus)
    register(engine, bus, store, "2", announce=True)
    run_until_idle([controller_consumer], bus=bus)
    assert end_state(engine)["digits"]["aliases"]["PROD"] == "2"

    send(engine, bus, *(batch("2", rows, shift=4.0) for rows in chunks(LIVE_START, LIVE_START + 400)))
    run_until_idle([consumer, controller_consumer, rollbacks], bus=bus)

    state = end_state(engine)["digits"]
    assert state["aliases"]["PROD"] == "1" and state["versions"]["2"] == "ROLLED_BACK"
    seen = types(engine)
    for expected in ("drift.measured", "drift.alert", "release.rollback_requested", "release.rolled_back"):
        assert expected in seen
    assert seen.index("drift.alert") < seen.index("release.rollback_requested") < seen.index("release.rolled_back")
    with session_scope(engine) as s:
        alert = next(r for r in journal.recent(s, topic=Topic.ALERTS))
        request = next(r for r in journal.recent(s, topic=Topic.ALERTS)
                       if r.type == EventType.ROLLBACK_REQUESTED)
        audit = [(e.actor, e.action) for e in registry.audit_log(s, model="digits")]
    assert alert.envelope["data"]["severity"] == "critical" and alert.envelope["data"]["window_index"] == 1
    assert request.envelope["data"]["actor"] == "drift-monitor" and request.envelope["data"]["version"] == "2"
    assert ("drift-monitor", "release.rolled_back") in audit
    assert monitor.wait_for_webhooks()
    called = [(url, p["type"]) for url, p in hooks.calls]
    assert called == ([(DRIFT["webhook_url"], EventType.DRIFT_ALERT)] if allowed else [])


def test_redelivered_batch_is_not_counted_twice(setup: Any, tmp_path: Path) -> None:
    """A batch handled, then redelivered (its ack lost), adds its records once: the window closes at 200, not 150."""
    engine, bus, store = setup
    register(engine, bus, store, "1")
    monitor, consumer = monitor_for(engine, bus, store, tmp_path)
    send(engine, bus, batch("1", range(LIVE_START, LIVE_START + 150)))
    first = bus.pull(MONITOR_SUBSCRIPTION)
    monitor.handle(first[0].event)
    bus.nack(first[0], error="simulated crash before ack")
    second = bus.pull(MONITOR_SUBSCRIPTION)
    assert second[0].event.id == first[0].event.id and second[0].attempt == 2
    consumer.settle(second[0])
    assert types(engine, Topic.DRIFT_METRICS) == []
    send(engine, bus, batch("1", range(LIVE_START + 150, LIVE_START + 200)))
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        measured = [r.envelope["data"] for r in journal.recent(s, topic=Topic.DRIFT_METRICS)]
        logged = s.exec(select(func.count()).select_from(PredictionLogRow)).one()
    assert [(m["window"]["index"], m["samples"]) for m in measured] == [(0, 200)]
    assert logged == 200


def test_alert_state_survives_a_monitor_restart(setup: Any, tmp_path: Path) -> None:
    """Two drifting windows before a restart and one after fire the 3-window alert, at window index 2."""
    engine, bus, store = setup
    register(engine, bus, store, "1", {**DRIFT, "consecutive_windows": 3, "rollback_on_critical": False})
    _first, consumer = monitor_for(engine, bus, store, tmp_path)
    send(engine, bus, *(batch("1", rows, shift=4.0) for rows in chunks(LIVE_START, LIVE_START + 400)))
    run_until_idle([consumer], bus=bus)
    assert types(engine, Topic.ALERTS) == []

    _second, consumer = monitor_for(engine, bus, store, tmp_path)
    send(engine, bus, *(batch("1", rows, shift=4.0) for rows in chunks(LIVE_START + 400, LIVE_START + 600)))
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        alerts = [r.envelope["data"] for r in journal.recent(s, topic=Topic.ALERTS)]
        indices = [r.envelope["data"]["window"]["index"] for r in journal.recent(s, topic=Topic.DRIFT_METRICS)]
    assert indices == [0, 1, 2]
    assert [(a["kind"], a["window_index"], a["rollback_requested"]) for a in alerts] == [("fired", 2, False)]
    assert "release.rollback_requested" not in types(engine)


def test_flush_closes_a_quiet_window_and_prunes_old_predictions(sqlite_engine: Engine, tmp_path: Path) -> None:
    """An idle stream's window is closed by flush once window_seconds have passed; expired request ids go."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    store = MemoryStore()
    register(sqlite_engine, bus, store, "1", {**DRIFT, "window_seconds": 60})
    monitor, consumer = monitor_for(sqlite_engine, bus, store, tmp_path)
    send(sqlite_engine, bus, batch("1", range(LIVE_START, LIVE_START + 50)))
    run_until_idle([consumer], bus=bus)
    assert monitor.flush(T0 + timedelta(seconds=LIVE_START + 30)) == 0
    assert monitor.flush(T0 + timedelta(seconds=LIVE_START + 61)) == 1
    assert types(sqlite_engine, Topic.DRIFT_METRICS) == ["drift.measured"]
    monitor.flush(T0 + timedelta(days=8))
    with session_scope(sqlite_engine) as s:
        assert s.exec(select(func.count()).select_from(PredictionLogRow)).one() == 0


def test_unknown_versions_and_other_event_types_are_skipped(sqlite_engine: Engine, tmp_path: Path) -> None:
    """Records of an unregistered version are ignored and foreign event types are acked without effect."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    store = MemoryStore()
    _monitor, consumer = monitor_for(sqlite_engine, bus, store, tmp_path)
    send(sqlite_engine, bus, batch("9", range(0, 10)), make_event(EventType.DRIFT_MEASURED, {"x": 1}))
    assert run_until_idle([consumer], bus=bus) == 2
    with session_scope(sqlite_engine) as s:
        assert s.exec(select(func.count()).select_from(PredictionLogRow)).one() == 0


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real local HTTP server that records JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_default_webhook_posts_json(receiver: tuple[str, list[dict[str, Any]]]) -> None:
    """The default sender POSTs the alert as JSON over real HTTP."""
    url, received = receiver
    post_json(url, {"id": "a1", "type": str(EventType.DRIFT_ALERT)})
    assert received == [{"id": "a1", "type": str(EventType.DRIFT_ALERT)}]
