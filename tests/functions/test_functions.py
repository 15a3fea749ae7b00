"""Real functions-framework processes receiving storage CloudEvents exactly as Eventarc sends them."""

from __future__ import annotations

import base64
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from release import registry
from release.db import make_engine, session_scope
from tests.artifacts import torchscript_bytes, write_artifact
from tests.servers.functions import start_function

GOLDEN = json.loads((Path(__file__).parents[1] / "data/events/storage_finalized_binary.json").read_text())


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Settings of the function processes: a bucket folder and a SQLite store."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    return {**os.environ, "RELEASE_HOME": str(tmp_path / "home"), "RELEASE_BUCKET": str(bucket),
            "RELEASE_LOG_FORMAT": "json", "PYTHONPATH": str(Path(__file__).parents[2])}


@pytest.fixture
def storage_fn(env: dict[str, str]) -> Iterator[str]:
    """A functions-framework process serving on_storage_event."""
    proc, url = start_function("on_storage_event", "cloudevent", env=env, log=Path(env["RELEASE_HOME"] + ".fn.log"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _binary(name: str, bucket: str, event_id: str = "1") -> tuple[dict[str, str], bytes]:
    headers = dict(GOLDEN["headers"], **{"ce-id": event_id, "ce-subject": f"objects/{name}",
                                         "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}"})
    data = dict(copy.deepcopy(GOLDEN["data"]), name=name, bucket=bucket)
    return headers, json.dumps(data).encode()


def test_binary_and_structured_events_register_once(storage_fn: str, env: dict[str, str]) -> None:
    """The same finalize event in binary mode, again, and in structured mode registers the model once."""
    bucket = Path(env["RELEASE_BUCKET"])
    write_artifact(bucket, "digits", "1", {"model.pt": torchscript_bytes()})
    headers, body = _binary("models/digits/1/manifest.json", bucket.name)
    first = httpx.post(storage_fn, headers=headers, content=body)
    again = httpx.post(storage_fn, headers=headers, content=body)
    structured = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
    structured["data"] = json.loads(body)
    third = httpx.post(storage_fn, headers={"Content-Type": "application/cloudevents+json"},
                       content=json.dumps(structured))
    assert [r.status_code for r in (first, again, third)] == [200, 200, 200]
    engine = make_engine(f"sqlite:///{Path(env['RELEASE_HOME']) / 'release.db'}")
    with session_scope(engine) as s:
        assert [v.version for v in registry.list_versions(s, "digits")] == ["1"]


def test_malformed_event_gets_a_clear_4xx(storage_fn: str, env: dict[str, str]) -> None:
    """A finalize event whose data is not an object resource is refused with 400 and a reason."""
    headers, _ = _binary("models/digits/1/manifest.json", "b")
    response = httpx.post(storage_fn, headers=headers, content=b'{"bucket": 5}')
    assert response.status_code == 400
    assert response.json()["error"]["reason"] == "event_invalid"


def test_bucket_notification_push_is_accepted(env: dict[str, str]) -> None:
    """A Pub/Sub push of a JSON_API_V1 bucket notification reaches intake like an Eventarc event."""
    bucket = Path(env["RELEASE_BUCKET"])
    write_artifact(bucket, "digits", "2", {"model.pt": torchscript_bytes()})
    proc, url = start_function("on_bucket_notification", "http", env=env, log=Path(env["RELEASE_HOME"] + ".push.log"))
    try:
        data = dict(GOLDEN["data"], name="models/digits/2/manifest.json", bucket=bucket.name)
        push = {"message": {"data": base64.b64encode(json.dumps(data).encode()).decode(), "messageId": "9",
                            "attributes": {"eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1",
                                           "bucketId": bucket.name, "objectId": data["name"],
                                           "objectGeneration": data["generation"]}},
                "subscription": "projects/p/subscriptions/s"}
        ok = httpx.post(url, json=push)
        bad = httpx.post(url, json={"message": {"data": "%%%"}})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert ok.status_code == 200 and ok.json()["status"] == "registered"
    assert bad.status_code == 400
