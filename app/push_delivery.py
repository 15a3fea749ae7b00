"""Delivery by HTTP push to the function processes of ``release up --functions``, as Eventarc does on Google Cloud.

* ``PushDispatcher``: pulls one subscription of the bus and POSTs each message to its target as the
  ``messagePublished`` CloudEvent an Eventarc Pub/Sub trigger sends; the answer settles it as a push
  subscription would: 2xx acks, 429 and 5xx redeliver after ``Retry-After`` (or a backoff), and any other 4xx is
  a refusal that redelivery cannot fix, acked and logged like a ``PermanentError`` in an in-process consumer.
* ``BucketPusher``: turns the local bucket watcher's finalized objects into Eventarc storage CloudEvents for
  ``on_storage_event``; an object whose delivery failed is offered again on the next pass.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import structlog

from functions.pubsub_events import eventarc_request
from release.adapters.local_bucket import LocalBucketWatcher
from release.ports import EventBus, Message
from schemas.error_table import MAX_BACKOFF_S, UNEXPECTED_DELAY_S
from schemas.events import CloudEvent
from schemas.storage import StorageObjectData

log = structlog.get_logger(__name__)

#: Where a target answers now: the supervisor's URL, which moves when a process is restarted.
Locate = Callable[[], str]


def _redeliver_after(response: httpx.Response | None, attempt: int) -> float:
    """``Retry-After`` when the function gave one, else the error table's backoff for unexpected failures."""
    header: str | None = response.headers.get("Retry-After") if response is not None else None
    if header is not None:
        try:
            return float(header)
        except ValueError:
            pass  # an HTTP date: fall back to the backoff
    return min(UNEXPECTED_DELAY_S * 2.0 ** max(attempt - 1, 0), MAX_BACKOFF_S)


@dataclass
class PushDispatcher:
    """One subscription pushed to one function target."""

    bus: EventBus
    subscription: str
    topic: str
    locate: Locate
    project: str
    timeout_s: float
    on_delivered: Callable[[CloudEvent], None] | None = None
    client: httpx.Client = field(default_factory=httpx.Client, repr=False)

    def deliver(self, message: Message) -> int | None:
        """POST one message and settle it by the answer; returns the status (None: no answer)."""
        headers, body = eventarc_request(message.event, project=self.project, topic=self.topic,
                                         subscription=self.subscription, message_id=message.event.id)
        try:
            response = self.client.post(self.locate(), headers=headers, content=body, timeout=self.timeout_s)
        except httpx.TransportError as error:
            log.warning("push.unreachable", subscription=self.subscription, event_id=message.event.id, error=str(error))
            self.bus.nack(message, error=f"push failed: {error}", delay_s=_redeliver_after(None, message.attempt))
            return None
        status = response.status_code
        if 200 <= status < 300:
            self.bus.ack(message)
            if self.on_delivered is not None:
                self.on_delivered(message.event)
        elif status == 429 or status >= 500:
            delay = _redeliver_after(response, message.attempt)
            log.warning("push.redeliver", subscription=self.subscription, event_id=message.event.id, status=status,
                        delay_s=delay, attempt=message.attempt)
            self.bus.nack(message, error=f"HTTP {status}: {response.text[:500]}", delay_s=delay)
        else:
            log.warning("push.refused", subscription=self.subscription, event_id=message.event.id, status=status,
                        answer=response.text[:500])
            self.bus.ack(message)
        return status

    def run(self, stop: threading.Event, *, wait_s: float = 0.5) -> None:
        """Pull and push until ``stop``, in order (one delivery in flight, like the in-process consumer)."""
        while not stop.is_set():
            for message in self.bus.pull(self.subscription, max_messages=10, wait_s=wait_s):
                self.deliver(message)


@dataclass
class BucketPusher:
    """The local bucket's finalized objects, pushed to ``on_storage_event``."""

    watcher: LocalBucketWatcher
    locate: Locate
    timeout_s: float
    client: httpx.Client = field(default_factory=httpx.Client, repr=False)
    _pending: dict[str, tuple[dict[str, str], StorageObjectData]] = field(default_factory=dict, repr=False)

    def push(self, attributes: dict[str, str], data: StorageObjectData) -> bool:
        """POST one storage CloudEvent in binary mode; True when the function took it."""
        headers = {f"ce-{k}": v for k, v in attributes.items() if k != "datacontenttype"}
        headers["Content-Type"] = "application/json"
        body = json.dumps(data.model_dump(mode="json", by_alias=True, exclude_none=True))
        try:
            response = self.client.post(self.locate(), headers=headers, content=body, timeout=self.timeout_s)
        except httpx.TransportError as error:
            log.warning("bucket_push.unreachable", object=data.name, error=str(error))
            return False
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("bucket_push.retry", object=data.name, status=response.status_code)
            return False
        if response.status_code >= 300:
            log.warning("bucket_push.refused", object=data.name, status=response.status_code,
                        answer=response.text[:500])
        return True

    def scan(self) -> int:
        """One pass: new objects and earlier failures; returns how many were delivered."""
        for attributes, data in self.watcher.scan():
            self._pending[attributes["id"]] = (attributes, data)
        delivered = [key for key, (attributes, data) in list(self._pending.items()) if self.push(attributes, data)]
        for key in delivered:
            del self._pending[key]
        return len(delivered)
