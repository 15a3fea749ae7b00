"""What a Pub/Sub bus process knows about its deliveries: messages it expects to arrive (so ``backlog`` can count
them before Pub/Sub hands them over) and, per subscription, the streaming subscriber with what it holds.

``backlog`` can only count what this process knows, because Pub/Sub cannot cheaply report a subscription's
server-side backlog: deliveries buffered or leased here, messages this process relayed (or asked to have
redelivered) to a subscription it ensured and has not received back yet, and journal rows not relayed yet.
That is exactly what ``release run --until-idle`` needs when one process produces and consumes. A message
published by another process is invisible until it arrives, and a message this process awaits but another
process consumes stops counting after ``AWAIT_GRACE_S``.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

from google.cloud.pubsub_v1.subscriber.message import Message as PubSubMessage

from release.ports import SubscriptionSpec
from schemas.events import CloudEvent

# How long a message relayed (or nacked) by this process counts in ``backlog`` until it arrives: long enough
# for Pub/Sub's delivery latency, short enough that a message consumed by another process does not stall us.
AWAIT_GRACE_S = 15.0
# Long-running consumers that nobody asks for a backlog still forget old entries past this size.
_AWAITED_PRUNE_AT = 10_000


@dataclass
class Awaited:
    """Message ids a subscription should receive soon. Arrivals are remembered for a while too, because a
    delivery can overtake the publish future that tells the relay its message id."""

    due: dict[str, float] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)

    def expect(self, message_id: str, *, until: float) -> None:
        if self.arrived.pop(message_id, None) is None:
            self.due[message_id] = until
            if len(self.due) > _AWAITED_PRUNE_AT:
                self.pending(now=time.monotonic())

    def expect_again(self, message_id: str, *, until: float) -> None:
        self.arrived.pop(message_id, None)
        self.due[message_id] = until

    def arrive(self, message_id: str, *, now: float) -> None:
        if self.due.pop(message_id, None) is None:
            self.arrived[message_id] = now
            if len(self.arrived) > _AWAITED_PRUNE_AT:
                self.pending(now=now)

    def pending(self, *, now: float) -> int:
        self.due = {k: until for k, until in self.due.items() if until > now}
        self.arrived = {k: at for k, at in self.arrived.items() if at > now - AWAIT_GRACE_S}
        return len(self.due)


@dataclass
class StreamConsumer:
    """The StreamingPull subscriber of one subscription and the deliveries this process holds from it."""

    spec: SubscriptionSpec
    buffer: queue.Queue[tuple[PubSubMessage, CloudEvent]]
    awaited: Awaited
    future: Any = None
    leased: dict[str, PubSubMessage] = field(default_factory=dict)
