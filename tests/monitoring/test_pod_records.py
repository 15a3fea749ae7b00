"""The monitor takes the records pods print, as the Cloud Logging sink delivers them, as untrusted input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import func, select

from monitoring.monitor import MONITOR_SUBSCRIPTION
from monitoring.pod_records import pod_batch
from release.adapters.k8s_names import object_name
from release.adapters.local_bus import LocalEventBus
from release.adapters.pubsub_wire import decode
from release.db import session_factory, session_scope
from release.testing import MemoryStore
from release.worker import run_until_idle
from schemas.errors import PermanentError, Reason
from schemas.events import EventType
from schemas.pod_records import MAX_ENTRY_BYTES, MAX_RECORDS_PER_LINE, POD_RECORDS_KIND, log_entry_event
from schemas.tables import PredictionLogRow
from tests.monitoring.test_monitor import LIVE_START, X, batch, chunks, monitor_for, register, send, types

NAMESPACE = "model-release"


@pytest.fixture
def stack(engine: Engine) -> tuple[Engine, LocalEventBus, MemoryStore]:
    """A migrated store (SQLite, then PostgreSQL), its local bus and an in-memory bucket."""
    return engine, LocalEventBus(session_factory=session_factory(engine)), MemoryStore()


def pod_name(model: str = "digits", version: str = "1") -> str:
    """The name Kubernetes gives a pod of the version's Deployment."""
    return f"{object_name(model, version)}-7d9c8b6f5-x2x9z"


def entry(records: list[dict[str, Any]], *, pod: str | None = None, namespace: str = NAMESPACE,
          container: str = "server", insert_id: str = "id-1", **payload: Any) -> dict[str, Any]:
    """A LogEntry as the sink publishes it for one line a pod printed."""
    return {"insertId": insert_id, "logName": "projects/p/logs/stdout", "timestamp": "2026-12-01T08:00:00Z",
            "resource": {"type": "k8s_container", "labels": {
                "project_id": "p", "location": "europe-west4", "cluster_name": "c", "namespace_name": namespace,
                "pod_name": pod or pod_name(), "container_name": container}},
            "labels": {"k8s-pod/app_kubernetes_io/name": "model-server"},
            "jsonPayload": {"severity": "INFO", "kind": POD_RECORDS_KIND, "records": records, **payload}}


def records_of(version: str, rows: range) -> list[dict[str, Any]]:
    """Digits records as a pod of ``version`` prints them."""
    return batch(version, rows).data["records"]


def message(value: dict[str, Any]) -> bytes:
    """The Pub/Sub message body the sink publishes."""
    return json.dumps(value).encode()


def refused(value: dict[str, Any]) -> str:
    """The reason ``pod_batch`` refuses the entry with."""
    with pytest.raises(PermanentError) as caught:
        pod_batch(value, namespace=NAMESPACE)
    assert caught.value.reason is Reason.EVENT_INVALID
    return caught.value.message


def test_sink_messages_reach_drift_windows(stack: Any, tmp_path: Path) -> None:
    """LogEntries of a pod's lines become records of its version: windows are measured, redeliveries count once."""
    engine, bus, store = stack
    register(engine, bus, store, "1")
    _monitor, consumer = monitor_for(engine, bus, store, tmp_path)
    events = [decode(message(entry(records_of("1", rows), insert_id=f"id-{rows.start}")))
              for rows in chunks(LIVE_START, len(X))]
    assert {e.type for e in events} == {EventType.POD_RECORDS_LOGGED}
    send(engine, bus, *events, events[0])
    run_until_idle([consumer], bus=bus)
    assert types(engine).count("drift.measured") == 3
    with session_scope(engine) as s:
        assert s.exec(select(func.count()).select_from(PredictionLogRow)).one() == len(X) - LIVE_START


def test_a_lying_or_foreign_entry_is_refused_and_the_monitor_goes_on(stack: Any, tmp_path: Path) -> None:
    """Records claiming another version, or printed outside the serving containers, are settled unread."""
    engine, bus, store = stack
    register(engine, bus, store, "1")
    register(engine, bus, store, "2")
    _monitor, consumer = monitor_for(engine, bus, store, tmp_path)
    lying = entry(records_of("2", range(LIVE_START, LIVE_START + 400)), pod=pod_name("digits", "1"))
    sidecar = entry(records_of("1", range(LIVE_START, LIVE_START + 400)), container="istio-proxy", insert_id="id-2")
    send(engine, bus, decode(message(lying)), decode(message(sidecar)))
    run_until_idle([consumer], bus=bus)
    assert bus.backlog(MONITOR_SUBSCRIPTION) == 0
    with session_scope(engine) as s:
        assert s.exec(select(func.count()).select_from(PredictionLogRow)).one() == 0
    send(engine, bus, *(decode(message(entry(records_of("1", rows), insert_id=f"ok-{rows.start}")))
                        for rows in chunks(LIVE_START, LIVE_START + 400)))
    run_until_idle([consumer], bus=bus)
    assert types(engine).count("drift.measured") == 2


def test_only_the_deployment_says_which_version_printed_a_line() -> None:
    """Pod labels a line can set, another namespace, or a pod name of no Deployment are not believed."""
    mine = records_of("1", range(3))
    assert [r.version for r in pod_batch(entry(mine), namespace=NAMESPACE).records] == ["1"] * 3
    assert "another version" in refused(entry(records_of("2", range(3)), **{"logging.googleapis.com/labels": {
        "k8s-pod/modelrelease_dev/version": "2"}}))
    assert "namespace" in refused(entry(mine, namespace="default"))
    assert "namespace" in refused(entry(mine, pod="digits"))
    assert "Kubernetes container" in refused({**entry(mine), "resource": {"type": "gce_instance", "labels": {}}})


@pytest.mark.parametrize("payload", [
    {"kind": "something-else"},
    {"records": []},
    {"records": "not a list"},
    {"records": [{"request_id": "x"}]},
    {"records": [{**records_of("1", range(1))[0], "latency_ms": -1}]},
    {"records": records_of("1", range(1)) * (MAX_RECORDS_PER_LINE + 1)},
], ids=["kind", "empty", "not-a-list", "incomplete", "negative-latency", "too-many-records"])
def test_malformed_lines_are_refused(payload: dict[str, Any]) -> None:
    """A line that is not a bounded batch of valid records is refused whole."""
    value = entry(records_of("1", range(1)))
    value["jsonPayload"].update(payload)
    assert "invalid" in refused(value)


def test_oversized_and_foreign_messages_are_not_events() -> None:
    """A message larger than any LogEntry is refused before parsing; one that is neither kind stays invalid."""
    huge = message(entry(records_of("1", range(1)), padding="x" * MAX_ENTRY_BYTES))
    with pytest.raises(PermanentError, match="larger than a log entry"):
        log_entry_event(huge)
    with pytest.raises(PermanentError) as caught:
        decode(b'{"hello": "world"}')
    assert caught.value.reason is Reason.EVENT_INVALID
    with pytest.raises(PermanentError, match="insertId"):
        decode(message({**entry([]), "insertId": None}))
