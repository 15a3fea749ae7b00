"""The release path's function targets in real functions-framework processes, driven by golden Eventarc
``messagePublished`` CloudEvents (``tests/data/events/pubsub_message_published.json``), duplicates included.

The targets share one home (SQLite store, bucket folder) with this test, which registers digits 1 and 2 through
intake first, as the storage function would.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import func, select

from functions.pubsub_events import event_from_envelope
from release import registry
from release.adapters.pubsub_bus import PubSubEventBus
from release.bootstrap import App, bootstrap
from release.db import session_factory, session_scope
from release.ports import SubscriptionSpec
from release.settings import Settings
from schemas.events import CloudEvent, Topic
from schemas.states import VersionState
from schemas.tables import PredictionLogRow
from tests.artifacts import manifest_for, npz_bytes, torchscript_bytes, write_artifact
from tests.servers.functions import start_function
from tests.servers.pubsub_server import PubSubServer

GOLDEN: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "data/events/pubsub_message_published.json").read_text())
TARGETS = ("on_model_event", "on_registration", "on_prediction_logs", "on_alert", "on_tick")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, dict[str, str]]]:
    """An app with digits 1 and 2 registered, and the URL of each target serving its home."""
    root = tmp_path_factory.mktemp("fn")
    bucket = root / "bucket"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RELEASE_")},
           "RELEASE_HOME": str(root / "home"), "RELEASE_BUCKET": str(bucket), "RELEASE_LOG_FORMAT": "json",
           "RELEASE_GPU": "off", "PYTHONPATH": str(Path(__file__).parents[2])}
    for version in ("1", "2"):
        files = {"model.pt": torchscript_bytes(), "reference.npz": npz_bytes(x=_rows(50))}
        write_artifact(bucket, "digits", version, files, manifest_for("digits", version, files,
                                                                      reference="reference.npz"))
    app = bootstrap(Settings(home=root / "home", bucket=str(bucket), log_format="json"))
    app.intake.reconcile(final=True)
    procs, urls = [], {}
    try:
        for target in TARGETS:
            proc, urls[target] = start_function(target, "cloudevent", env=env, log=root / f"{target}.log")
            procs.append(proc)
        yield app, urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()  # gunicorn's graceful stop outlived its budget on a loaded machine
                proc.wait()
        app.close()


def _rows(n: int) -> Any:
    import numpy as np

    return np.random.default_rng(0).random((n, 64), dtype=np.float32)


def post(url: str, golden: str, **data: Any) -> httpx.Response:
    """POST a golden delivery; ``data`` replaces fields of the event inside the message (re-encoded)."""
    request = copy.deepcopy(GOLDEN[golden])
    if data:
        event = event_from_envelope(request["data"])
        changed = event.model_copy(update={"data": {**event.data, **data}})
        request["data"]["message"]["data"] = base64.b64encode(changed.model_dump_json().encode()).decode()
    return httpx.post(url, headers=request["headers"], content=json.dumps(request["data"]), timeout=120)


def audit(app: App, version: str) -> list[tuple[str, str]]:
    """The state moves of a digits version, oldest first."""
    with session_scope(app.engine) as s:
        return [(e.action, e.reason) for e in registry.audit_log(s, model="digits", limit=1000)
                if e.version == version and e.action == "version.state_changed"]


def test_golden_messages_decode_to_our_events() -> None:
    """Every golden delivery is a messagePublished CloudEvent carrying one of our events."""
    for name, request in GOLDEN.items():
        assert request["headers"]["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished", name
        event = event_from_envelope(request["data"])
        assert isinstance(event, CloudEvent) and event.type.startswith("dev.modelrelease."), name
        assert request["data"]["message"]["attributes"]["ce-id"] == event.id


def test_controller_target_takes_one_step_per_delivery(home: tuple[App, dict[str, str]]) -> None:
    """model.registered moves digits 2 to DEPLOYING; redelivered after its bytes changed in the bucket it FAILS the
    rollout; further duplicates change nothing."""
    app, urls = home
    first = post(urls["on_model_event"], "model_registered")
    assert first.status_code == 200
    assert audit(app, "2")[-1][1] == "rollout started"
    model = Path(app.settings.bucket_location) / "models/digits/2/model.pt"
    model.write_bytes(model.read_bytes() + b"tampered")
    assert post(urls["on_model_event"], "model_registered").status_code == 200
    moves = audit(app, "2")
    for _ in range(2):
        assert post(urls["on_model_event"], "model_registered").status_code == 200
    with session_scope(app.engine) as s:
        view = registry.get_version(s, "digits", "2")
    assert view.state is VersionState.FAILED and "changed in the bucket" in (view.state_reason or "")
    assert audit(app, "2") == moves and len(moves) == 2


def test_registration_target_builds_the_profile_once(home: tuple[App, dict[str, str]]) -> None:
    """model.registered for digits 1 stores its reference profile; the duplicate leaves it as it was."""
    app, urls = home
    assert post(urls["on_registration"], "model_registered", version="1").status_code == 200
    with session_scope(app.engine) as s:
        profile = registry.get_reference_profile(s, model="digits", version="1")
    assert profile is not None
    assert post(urls["on_registration"], "model_registered", version="1").status_code == 200
    with session_scope(app.engine) as s:
        assert registry.get_reference_profile(s, model="digits", version="1") == profile


def test_drift_target_counts_a_batch_once(home: tuple[App, dict[str, str]]) -> None:
    """A predictions.logged batch is recorded once however often it is delivered."""
    app, urls = home
    answers = [post(urls["on_prediction_logs"], "predictions_logged").status_code for _ in range(2)]
    with session_scope(app.engine) as s:
        rows = s.exec(select(func.count()).select_from(PredictionLogRow)).one()
    assert answers == [200, 200] and rows == 3


def test_ticks_reach_the_controller_and_the_drift_monitor(home: tuple[App, dict[str, str]]) -> None:
    """A tick, and its duplicate, is taken by the controller's tick target and by the drift monitor, whose
    process closes aged windows on it; neither records prediction rows for it."""
    app, urls = home
    before = _logged(app)
    answers = [post(urls[target], "tick").status_code for target in ("on_tick", "on_prediction_logs") * 2]
    assert answers == [200] * 4 and _logged(app) == before


def test_malformed_deliveries_get_a_clear_4xx(home: tuple[App, dict[str, str]]) -> None:
    """Bad base64, a body that is not our CloudEvent and an invalid batch are refused with 400 and a reason."""
    _app, urls = home
    url = urls["on_prediction_logs"]
    broken = copy.deepcopy(GOLDEN["predictions_logged"])
    broken["data"]["message"]["data"] = "%%%"
    not_ours = copy.deepcopy(GOLDEN["predictions_logged"])
    not_ours["data"]["message"]["data"] = base64.b64encode(b'{"hello": 1}').decode()
    answers = [httpx.post(url, headers=r["headers"], content=json.dumps(r["data"])) for r in (broken, not_ours)]
    answers.append(post(url, "predictions_logged", records=[]))
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert {a.json()["error"]["reason"] for a in answers} == {"event_invalid"}


def test_alert_target_applies_a_rollback_request_only_where_it_still_applies(
        home: tuple[App, dict[str, str]]) -> None:
    """A rollback request for a model without PROD is refused (404, settled); one for a version PROD already left
    is acknowledged and changes nothing, however often it comes."""
    app, urls = home
    refused = post(urls["on_alert"], "rollback_requested")
    assert refused.status_code == 404 and refused.json()["error"]["reason"] == "alias_not_found"
    with session_scope(app.engine) as s:
        registry.move_alias(s, model="digits", alias="PROD", version="1", expected_revision=None, actor="test",
                            reason="test")
    before = audit(app, "1")
    answers = [post(urls["on_alert"], "rollback_requested").status_code for _ in range(2)]
    with session_scope(app.engine) as s:
        prod = registry.find_alias(s, "digits", "PROD")
    assert answers == [200, 200] and prod is not None and prod.version == "1" and audit(app, "1") == before


def test_plain_pubsub_push_reaches_a_target(home: tuple[App, dict[str, str]]) -> None:
    """A Pub/Sub push envelope without CloudEvent headers (a push subscription straight at the function) is
    handled like Eventarc's delivery."""
    app, urls = home
    raw = copy.deepcopy(GOLDEN["predictions_logged"]["data"])
    event = _renamed(event_from_envelope(raw), "plain")
    raw["message"]["data"] = base64.b64encode(event.model_dump_json().encode()).decode()
    before = _logged(app)
    assert httpx.post(urls["on_prediction_logs"], json=raw).status_code == 200
    assert _logged(app) == before + 3


def test_pubsub_push_subscription_delivers_to_a_target(home: tuple[App, dict[str, str]]) -> None:
    """A push subscription made by the real client library on the local Pub/Sub server POSTs a published event
    to the function, which records its batch."""
    app, urls = home
    server = PubSubServer()
    bus = PubSubEventBus(session_factory=session_factory(app.engine), project="push-project",
                         emulator_host=server.start())
    try:
        bus.ensure_subscription(SubscriptionSpec(name="drift-push", topic=Topic.PREDICTION_LOGS,
                                                 push_endpoint=urls["on_prediction_logs"]))
        event = _renamed(event_from_envelope(GOLDEN["predictions_logged"]["data"]), "pushed")
        before = _logged(app)
        with session_scope(app.engine) as s:
            bus.publish(event, topic=Topic.PREDICTION_LOGS, session=s)
        bus.flush()
        deadline = time.monotonic() + 60
        while _logged(app) < before + 3:
            assert time.monotonic() < deadline, "the pushed batch never reached the function"
            time.sleep(0.1)  # the push happens in the server's thread; nothing here to await
    finally:
        bus.close()
        server.stop()
    assert _logged(app) == before + 3


def _logged(app: App) -> int:
    with session_scope(app.engine) as s:
        return s.exec(select(func.count()).select_from(PredictionLogRow)).one()


def _renamed(event: CloudEvent, prefix: str) -> CloudEvent:
    """The golden batch as another delivery: new event id, new request ids."""
    records = [{**r, "request_id": f"{prefix}-{r['request_id']}"} for r in event.data["records"]]
    return event.model_copy(update={"id": f"{prefix}-{event.id}", "data": {"records": records}})


def test_a_logging_sink_entry_reaches_the_drift_target_as_a_pod_records_event() -> None:
    """A LogEntry the logging sink delivers decodes to the pod-records event, named by its insertId."""
    entry = {"insertId": "abc", "jsonPayload": {"kind": "x"}, "resource": {"labels": {}}}
    data = base64.b64encode(json.dumps(entry).encode()).decode()
    event = event_from_envelope({"message": {"data": data}})
    assert event.type == "dev.modelrelease.pod_records.logged.v1"
    assert event.data == entry
