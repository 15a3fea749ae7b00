"""The in-memory Pub/Sub the local server (``tests.servers.pubsub_server``) serves: topics, subscriptions, leases.

It keeps the semantics our adapter relies on: at-least-once delivery with ack deadlines and redelivery,
per-delivery ``delivery_attempt`` counting, dead-letter forwarding after ``max_delivery_attempts`` (with the
attributes real Pub/Sub adds), ordering keys (with ``enable_message_ordering``, no message of a key is
delivered while an earlier one of that key is unacknowledged), fan-out to every subscription of a topic, and
the per-stream flow control a StreamingPull client asks for. It does not implement retry-policy backoff,
filters, snapshots or seek (push is ``tests.servers.pubsub_push``'s). It knows no gRPC beyond status codes: the
server translates requests into calls on ``Broker`` and holds ``Broker.cond`` around each.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.pubsub_v1 import types

DEFAULT_ACK_DEADLINE_S = 10
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
PULL_WAIT_S = 1.0


class AbortError(Exception):
    """A gRPC error status to return to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Stream:
    """One StreamingPull connection and the deliveries it holds (its flow control counts them)."""

    max_outstanding: int
    ack_deadline_s: float
    outstanding: int = 0


@dataclass
class _Entry:
    """One message in one subscription until it is acknowledged or dead-lettered."""

    seq: int
    message: types.PubsubMessage
    attempts: int = 0
    ack_id: str | None = None
    deadline: float = 0.0
    stream: Stream | None = None


@dataclass
class Subscription:
    """One subscription's configuration, its undelivered and leased messages."""

    config: types.Subscription
    entries: dict[int, _Entry] = field(default_factory=dict)
    leased: dict[str, _Entry] = field(default_factory=dict)

    @property
    def max_attempts(self) -> int | None:
        policy = self.config.dead_letter_policy
        return policy.max_delivery_attempts if policy.dead_letter_topic else None


class Broker:
    """Topics, subscriptions and deliveries; every method runs under ``self.cond``'s lock."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.topics: dict[str, types.Topic] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------------------------ admin
    def create_topic(self, topic: types.Topic) -> types.Topic:
        if not topic.name.startswith("projects/") or "/topics/" not in topic.name:
            raise AbortError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid topic name {topic.name!r}")
        if topic.name in self.topics:
            raise AbortError(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
        self.topics[topic.name] = topic
        return topic

    def topic(self, name: str) -> types.Topic:
        if name not in self.topics:
            raise AbortError(grpc.StatusCode.NOT_FOUND, f"Topic not found: {name}")
        return self.topics[name]

    def delete_topic(self, name: str) -> None:
        self.topic(name)
        del self.topics[name]
        for sub in self.subscriptions.values():
            if sub.config.topic == name:
                sub.config.topic = "_deleted-topic_"

    def create_subscription(self, config: types.Subscription) -> types.Subscription:
        if config.name in self.subscriptions:
            raise AbortError(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
        self.topic(config.topic)
        if not config.ack_deadline_seconds:
            config.ack_deadline_seconds = DEFAULT_ACK_DEADLINE_S
        if not 10 <= config.ack_deadline_seconds <= 600:
            raise AbortError(grpc.StatusCode.INVALID_ARGUMENT, "ack_deadline_seconds must be in 10..600")
        policy = config.dead_letter_policy
        if policy.dead_letter_topic:
            if not policy.max_delivery_attempts:
                policy.max_delivery_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS
            if not 5 <= policy.max_delivery_attempts <= 100:
                raise AbortError(grpc.StatusCode.INVALID_ARGUMENT, "max_delivery_attempts must be in 5..100")
        self.subscriptions[config.name] = Subscription(config=config)
        return config

    def subscription(self, name: str) -> Subscription:
        if name not in self.subscriptions:
            raise AbortError(grpc.StatusCode.NOT_FOUND, f"Subscription does not exist: {name}")
        return self.subscriptions[name]

    def delete_subscription(self, name: str) -> None:
        self.subscription(name)
        del self.subscriptions[name]
        self.cond.notify_all()

    # ------------------------------------------------------------------------------------ data
    def publish(self, topic_name: str, messages: list[types.PubsubMessage]) -> list[str]:
        self.topic(topic_name)
        ids = []
        for message in messages:
            seq = next(self._ids)
            stored = types.PubsubMessage(data=message.data, attributes=dict(message.attributes),
                                         ordering_key=message.ordering_key, message_id=str(seq),
                                         publish_time=datetime.now(UTC))
            for sub in self.subscriptions.values():
                if sub.config.topic == topic_name:
                    sub.entries[seq] = _Entry(seq=seq, message=stored)
            ids.append(str(seq))
        self.cond.notify_all()
        return ids

    def take(self, sub: Subscription, *, limit: int, stream: Stream | None,
             ack_deadline_s: float) -> list[types.ReceivedMessage]:
        """Lease up to ``limit`` deliverable messages, oldest first, honouring ordering keys."""
        self._sweep(sub, time.monotonic())
        if stream is not None and stream.max_outstanding:
            limit = min(limit, stream.max_outstanding - stream.outstanding)
        received: list[types.ReceivedMessage] = []
        blocked: set[str] = set()
        ordered = sub.config.enable_message_ordering
        for entry in list(sub.entries.values()):
            if len(received) >= limit:
                break
            key = entry.message.ordering_key if ordered else ""
            if key:
                if key in blocked:
                    continue
                # Whether this one is leased or about to be: later messages of its key wait for its ack.
                blocked.add(key)
            if entry.ack_id is not None:
                continue
            entry.attempts += 1
            entry.ack_id = f"{sub.config.name}#{entry.seq}#{entry.attempts}"
            entry.deadline = time.monotonic() + ack_deadline_s
            entry.stream = stream
            if stream is not None:
                stream.outstanding += 1
            sub.leased[entry.ack_id] = entry
            attempt = entry.attempts if sub.max_attempts is not None else 0
            received.append(types.ReceivedMessage(ack_id=entry.ack_id, message=entry.message,
                                                  delivery_attempt=attempt))
        return received

    def acknowledge(self, sub: Subscription, ack_ids: list[str]) -> None:
        for ack_id in ack_ids:
            entry = sub.leased.get(ack_id)
            if entry is not None:
                self._release(sub, entry)
                del sub.entries[entry.seq]
        self.cond.notify_all()

    def modify_ack_deadline(self, sub: Subscription, ack_ids: list[str], seconds: float) -> None:
        now = time.monotonic()
        for ack_id in ack_ids:
            entry = sub.leased.get(ack_id)
            if entry is None:
                continue
            if seconds <= 0:
                self._release(sub, entry)
            else:
                entry.deadline = now + seconds
        self._sweep(sub, now)
        self.cond.notify_all()

    def sweep(self) -> None:
        """Expire leases and dead-letter what ran out of attempts, in every subscription."""
        now = time.monotonic()
        changed = False
        for sub in list(self.subscriptions.values()):
            changed = self._sweep(sub, now) or changed
        if changed:
            self.cond.notify_all()

    def next_deadline(self) -> float:
        """Seconds until the next lease expires (bounded), so waiting streams wake up for redeliveries."""
        now = time.monotonic()
        deadlines = [e.deadline for s in self.subscriptions.values() for e in s.leased.values()]
        return max(0.0, min([*deadlines, now + PULL_WAIT_S]) - now)

    def _sweep(self, sub: Subscription, now: float) -> bool:
        changed = False
        for entry in [e for e in sub.leased.values() if e.deadline <= now]:
            self._release(sub, entry)
            changed = True
        max_attempts = sub.max_attempts
        if max_attempts is None:
            return changed
        for entry in [e for e in sub.entries.values() if e.ack_id is None and e.attempts >= max_attempts]:
            if self._dead_letter(sub, entry):
                del sub.entries[entry.seq]
                changed = True
        return changed

    def _release(self, sub: Subscription, entry: _Entry) -> None:
        assert entry.ack_id is not None
        del sub.leased[entry.ack_id]
        if entry.stream is not None:
            entry.stream.outstanding -= 1
        entry.ack_id, entry.stream = None, None

    def _dead_letter(self, sub: Subscription, entry: _Entry) -> bool:
        target = sub.config.dead_letter_policy.dead_letter_topic
        if target not in self.topics:
            return False  # Real Pub/Sub keeps the message when it cannot forward it; so do we.
        project, _, name = sub.config.name.removeprefix("projects/").partition("/subscriptions/")
        attributes = dict(entry.message.attributes)
        attributes.update({
            "CloudPubSubDeadLetterSourceDeliveryCount": str(entry.attempts),
            "CloudPubSubDeadLetterSourceSubscription": name,
            "CloudPubSubDeadLetterSourceSubscriptionProject": project,
            "CloudPubSubDeadLetterSourceTopicPublishTime": entry.message.publish_time.isoformat(),
        })
        self.publish(target, [types.PubsubMessage(data=entry.message.data, attributes=attributes,
                                                  ordering_key=entry.message.ordering_key)])
        return True
