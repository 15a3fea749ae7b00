"""The Pub/Sub wire: how a CloudEvent travels as a message, what dead-lettering adds to it, and how the client
library's errors become ours. Pure functions over the client's types; the bus in ``pubsub_bus`` does the I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import NoReturn

import grpc
from google.api_core import exceptions as api_exceptions
from google.cloud import pubsub_v1
from pydantic import ValidationError

from release.adapters.vendor_errors import ErrorTable, raise_translated, translated
from release.ports import DeadLetter
from schemas.errors import PermanentError, Reason, TemporaryError
from schemas.events import CloudEvent
from schemas.pod_records import log_entry_event

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
DEAD_LETTER_SUFFIX = "-dead-letter"
CE_ATTRIBUTES = ("id", "type", "source", "specversion", "subject", "time")
# What dead-lettering adds to a message's attributes; a redriven copy goes back without them.
DEAD_LETTER_ATTRIBUTES = frozenset({"error", "dead-letter-subscription", "delivery-attempts"})

# Vendor error -> (our class, reason); the first match wins.
ERRORS: ErrorTable = (
    (api_exceptions.Unauthenticated, PermanentError, Reason.UNAUTHORIZED),
    (api_exceptions.PermissionDenied, PermanentError, Reason.UNAUTHORIZED),
    (api_exceptions.InvalidArgument, PermanentError, Reason.INTERNAL),
    (api_exceptions.NotFound, PermanentError, Reason.INTERNAL),
    (api_exceptions.FailedPrecondition, PermanentError, Reason.INTERNAL),
    # The client's retries of a transient failure ran out of time.
    (api_exceptions.RetryError, TemporaryError, Reason.UNAVAILABLE),
    # UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN, publish timeouts.
    (api_exceptions.GoogleAPICallError, TemporaryError, Reason.UNAVAILABLE),
    (TimeoutError, TemporaryError, Reason.UNAVAILABLE),
    (grpc.RpcError, TemporaryError, Reason.UNAVAILABLE),
)


def _raise_translated(error: BaseException, action: str) -> NoReturn:
    raise_translated(error, table=ERRORS, what=f"Pub/Sub {action}")


def _translated(action: str) -> AbstractContextManager[None]:
    return translated(table=ERRORS, what=f"Pub/Sub {action}")




def raise_pubsub_error(error: BaseException, action: str) -> NoReturn:
    """Raise ``error`` as our ``TemporaryError`` or ``PermanentError``, chained."""
    raise_translated(error, table=ERRORS, what=f"Pub/Sub {action}")


def pubsub_errors(action: str) -> AbstractContextManager[None]:
    """A block whose client errors leave as ours."""
    return translated(table=ERRORS, what=f"Pub/Sub {action}")


def encode(event: CloudEvent) -> tuple[bytes, dict[str, str]]:
    """The message body (structured-mode CloudEvent) and attributes (binary-mode ``ce-*`` copies)."""
    envelope = event.model_dump(mode="json")
    attributes = {"content-type": STRUCTURED_CONTENT_TYPE}
    attributes.update({f"ce-{name}": str(envelope[name]) for name in CE_ATTRIBUTES
                       if envelope.get(name) is not None})
    return json.dumps(envelope, separators=(",", ":")).encode(), attributes


def decode(data: bytes) -> CloudEvent:
    """The CloudEvent in a message body, or a Cloud Logging sink's LogEntry wrapped as one (pods' prediction
    records, ``schemas.pod_records``); ``PermanentError(EVENT_INVALID)`` when it is neither."""
    try:
        return CloudEvent.model_validate_json(data)
    except ValidationError as e:
        if (entry := log_entry_event(data)) is not None:
            return entry
        raise PermanentError(f"message body is not a structured CloudEvent: {e.errors()[0]['msg']}",
                             reason=Reason.EVENT_INVALID) from e


def source_subscription(attributes: Mapping[str, str]) -> str:
    """The subscription a dead letter failed on: ours names it; Pub/Sub's own dead-lettering gives a full path."""
    name = attributes.get("dead-letter-subscription") or attributes.get("CloudPubSubDeadLetterSourceSubscription", "")
    return name.rsplit("/", 1)[-1]


def as_dead_letter(raw: pubsub_v1.types.ReceivedMessage) -> DeadLetter:
    """What a message on a ``<topic>-dead-letter`` subscription says about the failure that put it there."""
    attributes = raw.message.attributes
    attempts = attributes.get("delivery-attempts") or attributes.get("CloudPubSubDeadLetterSourceDeliveryCount", "0")
    return DeadLetter(subscription=source_subscription(attributes), event_id=attributes.get("ce-id", ""),
                      event_type=attributes.get("ce-type", ""), attempts=int(attempts),
                      error=attributes.get("error", ""), at=raw.message.publish_time)
