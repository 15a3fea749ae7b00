"""Intake's function targets (functions-framework entry points):

- ``on_storage_event``: Eventarc's Cloud Storage ``object.finalized`` CloudEvent -> intake.
- ``on_bucket_notification``: a Pub/Sub push of a bucket notification (JSON_API_V1) -> intake.
Each decodes into a ``schemas`` model, calls one service function and returns; what an exception means for
redelivery comes from the one error table, ``schemas.error_table`` (Eventarc and Pub/Sub push retry on 5xx
and 429, drop on other 4xx).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import functions_framework
import structlog
from cloudevents.http import CloudEvent
from flask import Request
from pydantic import ValidationError

from functions.runtime import answer, answer_cloud_event, current_app
from release.adapters.gcs_notifications import notification_to_storage_event
from schemas.errors import BadRequest, Reason
from schemas.storage import FINALIZED, StorageObjectData

log = structlog.get_logger(__name__)


def _intake(data: StorageObjectData) -> dict[str, Any]:
    app = current_app()
    result = app.intake.handle_object(data)
    # Hand the journalled events to the transport now rather than waiting for another process's relay loop.
    app.bus.flush()
    return {"status": result.status, "artifact": result.artifact, "reason": result.reason}


@functions_framework.cloud_event
def on_storage_event(event: CloudEvent) -> None:
    """Eventarc storage CloudEvent (binary or structured mode) -> intake."""
    def call() -> dict[str, Any]:
        if event["type"] != FINALIZED:
            return {"status": "ignored", "type": event["type"]}
        try:
            data = StorageObjectData.model_validate(event.data)
        except ValidationError as exc:
            raise BadRequest(f"storage event data is not an object resource: {exc.errors()[0]['msg']}",
                             reason=Reason.EVENT_INVALID) from exc
        structlog.contextvars.bind_contextvars(event_id=event["id"], object=data.name)
        return _intake(data)

    answer_cloud_event(call)


@functions_framework.http
def on_bucket_notification(request: Request) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Pub/Sub push of a Cloud Storage notification -> intake."""
    def call() -> dict[str, Any]:
        envelope = request.get_json(silent=True)
        message = envelope.get("message") if isinstance(envelope, dict) else None
        if not isinstance(message, dict) or "data" not in message:
            raise BadRequest("expected a Pub/Sub push envelope with message.data", reason=Reason.EVENT_INVALID)
        try:
            raw = base64.b64decode(message["data"], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise BadRequest("message.data is not base64", reason=Reason.EVENT_INVALID) from exc
        attributes = message.get("attributes") or {}
        if attributes.get("eventType", "OBJECT_FINALIZE") != "OBJECT_FINALIZE":
            return {"status": "ignored", "eventType": attributes.get("eventType")}
        _ce, data = notification_to_storage_event(raw, attributes)
        return _intake(data)

    return answer(call)
