"""Cloud Storage bucket notifications over Pub/Sub, converted to the storage CloudEvents intake accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

from release.adapters.gcs_notifications import notification_to_storage_event
from release.adapters.gcs_store import GcsArtifactStore
from schemas.errors import PermanentError, Reason
from schemas.storage import DELETED, FINALIZED, STORAGE_SOURCE_PREFIX
from tests.cloud.conftest import BUCKET, PROJECT, raw_pull
from tests.servers.gcs_server import GcsServer

OBJECT = {"kind": "storage#object", "bucket": "artifacts", "name": "models/a/1/manifest.json",
          "generation": "1700000000000001", "metageneration": "1", "size": "42", "md5Hash": "abc==",
          "crc32c": "def==", "contentType": "application/json", "updated": "2026-11-29T10:00:00.000Z"}
ATTRIBUTES = {"notificationConfig": "projects/_/buckets/artifacts/notificationConfigs/1",
              "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1", "bucketId": "artifacts",
              "objectId": "models/a/1/manifest.json", "objectGeneration": "1700000000000001",
              "eventTime": "2026-11-29T10:00:00.123Z"}


def test_bucket_notifications_arrive_over_pubsub_as_storage_events(tmp_path: Path, pubsub_host: str,
                                                                  raw_publisher: pubsub_v1.PublisherClient,
                                                                  raw_subscriber: pubsub_v1.SubscriberClient,
                                                                  prefix: str):
    """fake-gcs-server's Pub/Sub notification for an upload converts to the finalize event of that object."""
    topic = raw_publisher.topic_path(PROJECT, f"{prefix}bucket")
    subscription = raw_subscriber.subscription_path(PROJECT, f"{prefix}intake")
    raw_publisher.create_topic(name=topic)
    raw_subscriber.create_subscription(name=subscription, topic=topic)
    server = GcsServer(root=tmp_path / "gcs", pubsub_emulator_host=pubsub_host, pubsub_project=PROJECT,
                       pubsub_topic=f"{prefix}bucket")
    server.start()
    try:
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": server.url})
        client.create_bucket(BUCKET)
        store = GcsArtifactStore(uri=f"gs://{BUCKET}/release", emulator_host=server.url)
        info = store.write("models/a/1/manifest.json", b'{"name": "a"}')
        [received] = raw_pull(raw_subscriber, subscription, count=1)
    finally:
        server.stop()

    attributes, data = notification_to_storage_event(received.message.data, dict(received.message.attributes))
    assert attributes["type"] == FINALIZED
    assert attributes["source"] == STORAGE_SOURCE_PREFIX + BUCKET
    assert attributes["subject"] == "objects/release/models/a/1/manifest.json"
    assert data.bucket == BUCKET
    assert data.name == "release/models/a/1/manifest.json"
    assert data.generation_number == info.generation
    assert data.size_bytes == info.size
    assert data.crc32c == info.crc32c


def test_converter_maps_every_notification_type():
    """Each Cloud Storage notification eventType becomes the CloudEvents type Eventarc uses for it."""
    types = {"OBJECT_FINALIZE": FINALIZED, "OBJECT_DELETE": DELETED,
             "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
             "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived"}
    for notification_type, event_type in types.items():
        attributes, data = notification_to_storage_event(
            json.dumps(OBJECT).encode(), {**ATTRIBUTES, "eventType": notification_type})
        assert attributes["type"] == event_type
        assert attributes["time"] == ATTRIBUTES["eventTime"]
        assert attributes["specversion"] == "1.0"
        assert data.to_wire() == {**OBJECT, "storageClass": "STANDARD"}


def test_redelivered_notification_keeps_its_event_id():
    """The same notification twice gives the same id; another generation or event type gives another."""
    body = json.dumps(OBJECT).encode()
    first, _ = notification_to_storage_event(body, ATTRIBUTES)
    again, _ = notification_to_storage_event(body, dict(ATTRIBUTES))
    newer, _ = notification_to_storage_event(body, {**ATTRIBUTES, "objectGeneration": "1700000000000002"})
    deleted, _ = notification_to_storage_event(body, {**ATTRIBUTES, "eventType": "OBJECT_DELETE"})
    assert first["id"] == again["id"]
    assert len({first["id"], newer["id"], deleted["id"]}) == 3


def test_payload_format_none_is_described_from_attributes():
    """A notification without a body (payloadFormat=NONE) still names bucket, object and generation."""
    attributes, data = notification_to_storage_event(b"", {**ATTRIBUTES, "payloadFormat": "NONE"})
    assert (data.bucket, data.name, data.generation) == ("artifacts", "models/a/1/manifest.json",
                                                          "1700000000000001")
    assert attributes["subject"] == "objects/models/a/1/manifest.json"


def test_numbers_sent_as_json_numbers_are_kept_as_strings():
    """Emulators that send size/generation as numbers still yield the JSON API's string form."""
    body = json.dumps({**OBJECT, "size": 42, "metageneration": 3}).encode()
    _, data = notification_to_storage_event(body, ATTRIBUTES)
    assert (data.size, data.metageneration) == ("42", "3")


@pytest.mark.parametrize(("body", "attributes"), [
    (json.dumps(OBJECT).encode(), {**ATTRIBUTES, "eventType": "SOMETHING_ELSE"}),
    (json.dumps(OBJECT).encode(), {}),
    (b"{not json", ATTRIBUTES),
    (b"[1, 2]", ATTRIBUTES),
    (json.dumps({"kind": "storage#object"}).encode(), {"eventType": "OBJECT_FINALIZE"}),
])
def test_anything_else_is_an_invalid_event(body: bytes, attributes: dict[str, str]):
    """Messages that are not bucket notifications raise PermanentError(EVENT_INVALID): retrying cannot help."""
    with pytest.raises(PermanentError) as caught:
        notification_to_storage_event(body, attributes)
    assert caught.value.reason == Reason.EVENT_INVALID
