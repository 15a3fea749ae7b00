"""Cloud Storage Pub/Sub notifications (``JSON_API_V1``) turned into the storage CloudEvents of Eventarc.

A bucket can announce new objects two ways: Eventarc pushes CloudEvents, or a bucket notification publishes a
Pub/Sub message whose attributes name the event and whose body is the object resource. Intake accepts one
shape (``schemas.storage``), so this pure converter maps the second onto the first. It imports no Google
library: the entry points under ``functions/`` use it without pulling in a cloud SDK.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from schemas.errors import PermanentError, Reason
from schemas.storage import DELETED, FINALIZED, StorageObjectData, storage_event_attributes

# Notification ``eventType`` -> CloudEvents ``type`` as Eventarc names the same event.
EVENT_TYPES: Mapping[str, str] = {
    "OBJECT_FINALIZE": FINALIZED,
    "OBJECT_DELETE": DELETED,
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived",
}


def notification_to_storage_event(message_data: bytes,
                                  attributes: Mapping[str, str]) -> tuple[dict[str, str], StorageObjectData]:
    """The CloudEvents attributes and ``data`` of the storage event one bucket notification stands for.

    The event id is derived from bucket, object, generation, metageneration and event type, so a notification
    delivered twice (Pub/Sub is at-least-once) yields the same id and consumers de-duplicate it. A
    notification with ``payloadFormat=NONE`` has an empty body; the object is then described from the
    attributes alone. Raises ``PermanentError(EVENT_INVALID)`` for anything that is not a bucket notification:
    redelivery cannot repair it.
    """
    notification_type = attributes.get("eventType", "")
    event_type = EVENT_TYPES.get(notification_type)
    if event_type is None:
        raise PermanentError(f"not a Cloud Storage notification (eventType={notification_type!r})",
                             reason=Reason.EVENT_INVALID)
    data = _object_resource(message_data, attributes)
    event_id = _event_id(data, notification_type)
    time = attributes.get("eventTime") or data.updated or data.time_created or ""
    return storage_event_attributes(data, event_id=event_id, time=time, event_type=event_type), data


def _object_resource(message_data: bytes, attributes: Mapping[str, str]) -> StorageObjectData:
    resource: dict[str, Any] = {}
    if message_data:
        try:
            parsed = json.loads(message_data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PermanentError("bucket notification body is not JSON", reason=Reason.EVENT_INVALID) from e
        if not isinstance(parsed, dict):
            raise PermanentError("bucket notification body is not a JSON object", reason=Reason.EVENT_INVALID)
        resource = parsed
    # Attributes win for identity: Cloud Storage sets them in every format, the body only in JSON_API_V1.
    identity = (("bucket", "bucketId"), ("name", "objectId"), ("generation", "objectGeneration"))
    for field, attribute in identity:
        if attributes.get(attribute):
            resource[field] = attributes[attribute]
    # The JSON API sends numbers as strings, but some emulators send JSON numbers; the schema keeps strings.
    for field in ("size", "generation", "metageneration"):
        if isinstance(resource.get(field), int):
            resource[field] = str(resource[field])
    try:
        return StorageObjectData.model_validate(resource)
    except ValidationError as e:
        raise PermanentError(f"bucket notification does not describe an object: {e.errors()[0]['msg']}",
                             reason=Reason.EVENT_INVALID) from e


def _event_id(data: StorageObjectData, notification_type: str) -> str:
    key = "\n".join((data.bucket, data.name, data.generation, data.metageneration, notification_type))
    return hashlib.sha256(key.encode()).hexdigest()[:32]
