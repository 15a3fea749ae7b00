"""Our CloudEvents as Pub/Sub messages delivered over HTTP: Eventarc's ``messagePublished`` CloudEvent and the
plain Pub/Sub push envelope. Pure functions, no client library: the functions decode with them, and the local
push dispatcher of ``release up --functions`` encodes with them, so both ends speak the same shape.

A message's body is our event as a structured-mode CloudEvent (``release.adapters.pubsub_wire.encode``); its
attributes carry ``ce-*`` copies of the envelope. Eventarc wraps the message as::

    {"message": {"data": BASE64, "attributes": {...}, "messageId": ..., "publishTime": ...},
     "subscription": "projects/P/subscriptions/S"}

in a CloudEvent of type ``google.cloud.pubsub.topic.v1.messagePublished``; a push subscription POSTs that same
``{"message", "subscription"}`` object as a JSON body.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.errors import BadRequest, Reason
from schemas.events import CloudEvent
from schemas.pod_records import log_entry_event

MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
CE_ATTRIBUTES = ("id", "type", "source", "specversion", "subject", "time")


def event_from_envelope(envelope: object) -> CloudEvent:
    """The CloudEvent in a ``{"message": {"data": ...}}`` envelope; ``BadRequest(EVENT_INVALID)`` otherwise."""
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        raise BadRequest("expected a Pub/Sub message with base64 message.data", reason=Reason.EVENT_INVALID,
                         hint="Deliver through a Pub/Sub trigger or push subscription on one of our topics.")
    try:
        raw = base64.b64decode(message["data"], validate=True)
    except binascii.Error as exc:
        raise BadRequest("message.data is not base64", reason=Reason.EVENT_INVALID) from exc
    try:
        return CloudEvent.model_validate_json(raw)
    except ValidationError as exc:
        # A Cloud Logging sink delivers the pods' prediction-record lines as LogEntries, not CloudEvents.
        if (entry := log_entry_event(raw)) is not None:
            return entry
        raise BadRequest(f"message body is not a structured CloudEvent: {exc.errors()[0]['msg']}",
                         reason=Reason.EVENT_INVALID,
                         hint="Publish our events through the release bus, which writes them as CloudEvents.") from exc


def message_envelope(event: CloudEvent, *, subscription: str, message_id: str) -> dict[str, Any]:
    """``event`` as Pub/Sub delivers it: base64 body, ``ce-*`` attributes, id and publish time."""
    body = event.model_dump(mode="json")
    attributes = {"content-type": "application/cloudevents+json"}
    attributes.update({f"ce-{name}": str(body[name]) for name in CE_ATTRIBUTES if body.get(name) is not None})
    data = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
    published = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"message": {"data": data, "attributes": attributes, "messageId": message_id,
                        "publishTime": published},
            "subscription": subscription}


def eventarc_request(event: CloudEvent, *, project: str, topic: str, subscription: str,
                     message_id: str = "") -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode ``messagePublished`` CloudEvent Eventarc POSTs for ``event``."""
    message_id = message_id or uuid.uuid4().hex
    envelope = message_envelope(event, subscription=f"projects/{project}/subscriptions/{subscription}",
                                message_id=message_id)
    headers = {"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": message_id,
               "ce-type": MESSAGE_PUBLISHED,
               "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
               "ce-time": envelope["message"]["publishTime"]}
    return headers, json.dumps(envelope).encode()
