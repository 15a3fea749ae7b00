"""What every function target shares: the process's ``App`` (built on the first request, then reused), the
answer from the one error table, and the decoding of Pub/Sub deliveries into our CloudEvents.

functions-framework answers 200 "OK" when a CloudEvent function returns, so any other status leaves as an
``HTTPException`` carrying our JSON error body and, for a redelivery, ``Retry-After``: Eventarc and Pub/Sub
push acknowledge on 2xx and redeliver otherwise.
"""

from __future__ import annotations

import atexit
import functools
from collections.abc import Callable
from typing import Any

import functions_framework
import structlog
from cloudevents.http import CloudEvent as DeliveredEvent
from flask import abort, jsonify, make_response

from functions.pubsub_events import MESSAGE_PUBLISHED, event_from_envelope
from release.bootstrap import App, bootstrap
from release.settings import Settings
from schemas.error_table import http_status, retry_after
from schemas.errors import BadRequest, Reason, ReleaseError
from schemas.events import CloudEvent

log = structlog.get_logger(__name__)

Answer = tuple[dict[str, Any], int, dict[str, str]]


@functools.cache
def current_app() -> App:
    """The process's ``App``: a function instance serves many requests, and bootstraps once. When the process
    stops (functions-framework's worker exits on SIGTERM), the app is closed, which stops the local pods the
    controller started; pods of a process killed outright are adopted by its successor."""
    app = bootstrap(Settings())
    atexit.register(app.close)
    return app


def answer(call: Callable[[], dict[str, Any]]) -> Answer:
    """Run ``call``; a ``ReleaseError`` becomes the error table's status and ``Retry-After``."""
    try:
        return call(), 200, {}
    except ReleaseError as error:
        status, wait = http_status(error), retry_after(error)
        log.warning("function.failed", error=str(error), status=status)
        return {"error": error.to_dict()}, status, {"Retry-After": wait} if wait else {}
    finally:
        structlog.contextvars.clear_contextvars()


def answer_cloud_event(call: Callable[[], dict[str, Any]]) -> None:
    """``answer`` for a CloudEvent function: anything but 200 leaves as the table says."""
    body, status, headers = answer(call)
    if status != 200:
        abort(make_response(jsonify(body), status, headers))


def delivered(event: DeliveredEvent) -> CloudEvent:
    """Our event inside an Eventarc ``messagePublished`` CloudEvent."""
    if event["type"] != MESSAGE_PUBLISHED:
        raise BadRequest(f"expected a {MESSAGE_PUBLISHED} CloudEvent, got {event['type']}",
                         reason=Reason.EVENT_INVALID,
                         hint="Trigger this function from a Pub/Sub topic (an Eventarc Pub/Sub trigger).")
    ours = event_from_envelope(event.data)
    structlog.contextvars.bind_contextvars(delivery_id=event["id"], event_id=ours.id, event_type=ours.type)
    return ours


def pubsub_target(handle: Callable[[CloudEvent], object]) -> Callable[[DeliveredEvent], None]:
    """A CloudEvent function that decodes the delivered message, calls ``handle`` once and relays what it
    journalled to the transport before answering (no other process of the function's role relays it)."""
    def target(event: DeliveredEvent) -> None:
        def call() -> dict[str, Any]:
            ours = delivered(event)
            handle(ours)
            current_app().bus.flush()
            return {"status": "handled", "event": ours.id}

        answer_cloud_event(call)

    target.__name__ = handle.__name__
    target.__doc__ = handle.__doc__
    return functions_framework.cloud_event(target)

