"""The Pub/Sub ``EventBus``: the journal is the outbox, Cloud Pub/Sub is the transport.

``publish`` only writes the event into the journal inside the caller's transaction; ``flush`` is the relay
that hands unpublished journal rows to Pub/Sub and marks them published afterwards. Delivery is at-least-once:
a relay that dies between Pub/Sub accepting a batch and the mark commit publishes that batch again on its next
run, and two relays in two processes may both publish the same rows. Consumers therefore de-duplicate by event
id (``ProcessedEvent``), as they must anyway because Pub/Sub itself redelivers.

Wire format, chosen so every kind of consumer can read it:

* The message body is the whole CloudEvent in structured JSON mode
  (``content-type: application/cloudevents+json``): push subscribers and anything that stores the raw message
  get the complete envelope.
* The context attributes are *also* copied into Pub/Sub attributes the way the CloudEvents Pub/Sub binding's
  binary mode names them (``ce-id``, ``ce-type``, ``ce-source``, ``ce-specversion``, ``ce-subject``,
  ``ce-time``): subscription filters and Eventarc-style routers can select events without parsing the body.
* The ordering key is the model name (``CloudEvent.ordering_key``) with message ordering enabled on the
  publisher and on every subscription, so events about one model stay in order; events about no model are
  published without a key and are unordered.

Consuming: ``pull`` reads from a StreamingPull subscriber started lazily per subscription, which feeds a
bounded in-process buffer; its flow control (``max_outstanding_messages``) bounds buffered plus leased
deliveries, and its lease manager keeps extending a lease for up to the subscription's ``ack_deadline_s`` (the
port's meaning of the deadline). ``nack`` with attempts left asks for redelivery after ``delay_s``; ``nack``
on the last attempt publishes the message to ``<topic>-dead-letter`` with the error in its ``error`` attribute
and acks it, so nothing is dropped and the reason travels with it. Pub/Sub's own dead-letter policy stays on
as the backstop for a consumer that dies on every attempt before it can nack; Pub/Sub only accepts 5..100
attempts there, so ``max_attempts`` outside that range is clamped for the backstop only.

``backlog`` counts only what this process knows (see ``pubsub_tracking``). Topic and subscription creation
lives in ``pubsub_admin``, the wire format in ``pubsub_wire``, dead-letter reading in ``pubsub_dead_letters``.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import grpc
import structlog
from google.api_core import exceptions as api_exceptions
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message as PubSubMessage
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from sqlalchemy import func
from sqlmodel import Session, col, select

from release import journal
from release.adapters.pubsub_admin import create_subscription, create_topic
from release.adapters.pubsub_dead_letters import DeadLetterTopics
from release.adapters.pubsub_tracking import AWAIT_GRACE_S, Awaited, StreamConsumer
from release.adapters.pubsub_wire import DEAD_LETTER_SUFFIX, decode, encode, pubsub_errors, raise_pubsub_error
from release.ports import DeadLetter, Message, SubscriptionSpec
from schemas.errors import PermanentError, Reason
from schemas.events import CloudEvent, Topic
from schemas.tables import EventRecord

log = structlog.get_logger(__name__)

# Pub/Sub's accepted ranges: out-of-range values are clamped, not refused (see the module docstring).
ACK_DEADLINE_RANGE_S = (10, 600)
MAX_DELIVERY_ATTEMPTS_RANGE = (5, 100)
# Server-side backoff after a nack or an expired lease: without it Pub/Sub redelivers at once, in a hot loop.
RETRY_BACKOFF = (timedelta(seconds=10), timedelta(seconds=600))
def _clamp(value: float, bounds: tuple[int, int]) -> int:
    return int(min(max(math.ceil(value), bounds[0]), bounds[1]))


class PubSubEventBus:
    """An ``EventBus`` over Cloud Pub/Sub (or an emulator speaking its gRPC API)."""

    def __init__(self, *, session_factory: Callable[[], Session], project: str,
                 emulator_host: str | None = None, topic_prefix: str = "",
                 max_outstanding_messages: int = 100, publish_timeout_s: float = 60.0,
                 relay_batch_size: int = 500, relay_topics: frozenset[str] | None = None) -> None:
        """``emulator_host`` (``PUBSUB_EMULATOR_HOST``, passed in by the bootstrap) selects a plaintext
        channel to an emulator; without it the clients use Application Default Credentials. ``topic_prefix``
        goes in front of every topic and subscription name, so several installations (or tests) share one
        project. ``relay_topics`` limits ``flush`` to the topics this process may publish to (None: all)."""
        self._session_factory = session_factory
        self._project = project
        self._prefix = topic_prefix
        self._max_outstanding = max_outstanding_messages
        self._publish_timeout_s = publish_timeout_s
        self._relay_batch_size = relay_batch_size
        self._relay_topics = relay_topics
        publisher_kwargs: dict[str, Any] = {}
        subscriber_kwargs: dict[str, Any] = {}
        if emulator_host:
            # An emulator speaks plaintext gRPC and takes no credentials.
            publisher_kwargs["transport"] = PublisherGrpcTransport(
                channel=grpc.insecure_channel(emulator_host))
            subscriber_kwargs["transport"] = SubscriberGrpcTransport(
                channel=grpc.insecure_channel(emulator_host))
        with pubsub_errors("client setup"):
            self._publisher = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.01),
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
                **publisher_kwargs)
            self._subscriber = pubsub_v1.SubscriberClient(**subscriber_kwargs)
        self._lock = threading.Lock()
        self._relay_lock = threading.Lock()
        self._known_topics: set[str] = set()
        self._specs: dict[str, SubscriptionSpec] = {}
        self._awaited: dict[str, Awaited] = {}
        self._consumers: dict[str, StreamConsumer] = {}
        self._closed = False
        self._dead_letters = DeadLetterTopics(subscriber=self._subscriber, publisher=self._publisher,
                                              subscription_path=self.subscription_path, topic_path=self.topic_path,
                                              timeout_s=publish_timeout_s)

    # ------------------------------------------------------------------------------------ names
    def topic_path(self, topic: str) -> str:
        """The full Pub/Sub name of one of our topics."""
        return f"projects/{self._project}/topics/{self._prefix}{topic}"

    def subscription_path(self, subscription: str) -> str:
        """The full Pub/Sub name of one of our subscriptions."""
        return f"projects/{self._project}/subscriptions/{self._prefix}{subscription}"

    # ------------------------------------------------------------------------------------ setup
    def setup(self, topics: Iterable[Topic], subscriptions: Iterable[SubscriptionSpec]) -> None:
        """Create every topic and subscription (``release setup``); idempotent.

        Pub/Sub drops messages published to a topic that has no subscription yet, so run this (or
        ``ensure_subscription`` for every consumer) before the first ``flush``.
        """
        for topic in topics:
            self._ensure_topic(self.topic_path(topic))
            self._ensure_dead_letter(topic)
        for spec in subscriptions:
            self.ensure_subscription(spec)

    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Create the topic, its dead-letter topic (with a subscription keeping the dead letters) and the
        subscription when missing. An existing subscription is kept as it is."""
        topic = self.topic_path(spec.topic)
        self._ensure_topic(topic)
        dead_letter = self._ensure_dead_letter(spec.topic)
        create_subscription(self._subscriber, pubsub_v1.types.Subscription(
            name=self.subscription_path(spec.name), topic=topic,
            ack_deadline_seconds=_clamp(spec.ack_deadline_s, ACK_DEADLINE_RANGE_S),
            enable_message_ordering=True,
            dead_letter_policy=pubsub_v1.types.DeadLetterPolicy(
                dead_letter_topic=self.topic_path(dead_letter),
                max_delivery_attempts=_clamp(spec.max_attempts, MAX_DELIVERY_ATTEMPTS_RANGE)),
            retry_policy=pubsub_v1.types.RetryPolicy(minimum_backoff=RETRY_BACKOFF[0],
                                                     maximum_backoff=RETRY_BACKOFF[1])))
        with self._lock:
            self._specs[spec.name] = spec
            self._awaited.setdefault(spec.name, Awaited())

    def _ensure_dead_letter(self, topic: str) -> str:
        """``<topic>-dead-letter`` and the subscription that keeps its messages; returns its name."""
        dead_letter = f"{topic}{DEAD_LETTER_SUFFIX}"
        self._ensure_topic(self.topic_path(dead_letter))
        create_subscription(self._subscriber, pubsub_v1.types.Subscription(
            name=self.subscription_path(dead_letter), topic=self.topic_path(dead_letter),
            ack_deadline_seconds=ACK_DEADLINE_RANGE_S[1]))
        return dead_letter

    def _ensure_topic(self, path: str) -> None:
        with self._lock:
            if path in self._known_topics:
                return
        create_topic(self._publisher, path)
        with self._lock:
            self._known_topics.add(path)

    # ------------------------------------------------------------------------------------ publishing
    def publish(self, event: CloudEvent, *, topic: Topic, session: Session, not_before: datetime | None = None) -> None:
        """Journal ``event`` for ``flush`` to relay after commit. Pub/Sub cannot delay: ``not_before`` is ignored."""
        journal.append(session, event, topic=topic)

    def flush(self) -> int:
        """Relay every unpublished journal row to Pub/Sub and mark it published. Returns how many were sent.

        Rows Pub/Sub accepted are marked even when others failed; the failures then raise ``TemporaryError``
        and are retried by the next flush, in journal order (a failed ordering key is resumed first).
        """
        sent = 0
        with self._relay_lock:
            while True:
                with self._session_factory() as session:
                    rows = journal.unpublished(session, limit=self._relay_batch_size, topics=self._relay_topics)
                    batch = [(row.seq, row.topic, journal.to_event(row)) for row in rows]
                if not batch:
                    return sent
                sent += self._relay(batch)
                if len(batch) < self._relay_batch_size:
                    return sent

    def _relay(self, batch: list[tuple[int | None, str, CloudEvent]]) -> int:
        pending = []
        for seq, topic, event in batch:
            path = self.topic_path(topic)
            self._ensure_topic(path)
            data, attributes = encode(event)
            future = self._publisher.publish(path, data, ordering_key=event.ordering_key, **attributes)
            pending.append((seq, topic, path, event.ordering_key, future))
        published: list[int] = []
        failures: list[tuple[str, str, BaseException]] = []
        for seq, topic, path, key, future in pending:
            try:
                message_id = future.result(timeout=self._publish_timeout_s)
            except Exception as e:  # every failure is retried by the next flush
                failures.append((path, key, e))
            else:
                assert seq is not None
                published.append(seq)
                self._await_everywhere(topic, message_id)
        if published:
            with self._session_factory() as session:
                journal.mark_published(session, published)
                session.commit()
        for path, key, _ in failures:
            if key:
                # A failed publish pauses its ordering key so later events cannot overtake it; resume it now
                # that the journal still holds the failed event for the next flush.
                self._publisher.resume_publish(path, key)
        if failures:
            raise_pubsub_error(failures[0][2], f"publish of {len(failures)} of {len(pending)} events")
        return len(published)

    # ------------------------------------------------------------------------------------ consuming
    def pull(self, subscription: str, *, max_messages: int = 10, wait_s: float = 0.0) -> list[Message]:
        """Up to ``max_messages`` deliveries from the local buffer; waits ``wait_s`` at most for the first."""
        consumer = self._consumer(subscription)
        try:
            first = consumer.buffer.get(timeout=wait_s) if wait_s > 0 else consumer.buffer.get_nowait()
        except queue.Empty:
            self._raise_if_stopped(subscription, consumer)
            return []
        taken = [first]
        while len(taken) < max_messages:
            try:
                taken.append(consumer.buffer.get_nowait())
            except queue.Empty:
                break
        messages = []
        with self._lock:
            for raw, event in taken:
                consumer.leased[raw.ack_id] = raw
                messages.append(Message(event=event, subscription=subscription,
                                        attempt=raw.delivery_attempt or 1, handle=raw.ack_id))
        return messages

    def ack(self, message: Message) -> None:
        """The delivery is done. A handle already settled is ignored (Pub/Sub may redeliver anyway)."""
        raw = self._release(message)
        if raw is not None:
            raw.ack()

    def nack(self, message: Message, *, error: str, delay_s: float = 0.0) -> None:
        """Redeliver after ``delay_s`` (at most 600 s, Pub/Sub's limit) or, on the last attempt, dead-letter
        it with ``error``."""
        raw = self._release(message)
        if raw is None:
            return
        if message.attempt >= self._specs[message.subscription].max_attempts:
            self._dead_letters.put(raw, topic=str(self._specs[message.subscription].topic),
                                   subscription=message.subscription, attempt=message.attempt, error=error,
                                   event_id=message.event.id)
            return
        log.info("pubsub.nack", subscription=message.subscription, event_id=message.event.id,
                 attempt=message.attempt, error=error, delay_s=delay_s)
        delay = _clamp(delay_s, (0, ACK_DEADLINE_RANGE_S[1]))
        with self._lock:
            self._awaited[message.subscription].expect_again(
                raw.message_id, until=time.monotonic() + delay + AWAIT_GRACE_S)
        if delay == 0:
            raw.nack()
        else:
            # The lease ends in ``delay`` seconds, and the lease manager must stop extending it.
            raw.modify_ack_deadline(delay)
            raw.drop()

    def backlog(self, subscription: str) -> int:
        """Deliveries this process holds or awaits, plus journal rows for the topic not yet relayed."""
        with self._lock:
            spec = self._specs.get(subscription)
            consumer = self._consumers.get(subscription)
            local = 0 if consumer is None else consumer.buffer.qsize() + len(consumer.leased)
            if spec is None:
                return local
            local += self._awaited[subscription].pending(now=time.monotonic())
        with self._session_factory() as session:
            query = (select(func.count()).select_from(EventRecord)
                     .where(EventRecord.topic == str(spec.topic), col(EventRecord.published_at).is_(None)))
            unrelayed = session.exec(query).one()
        return local + int(unrelayed)

    def dead_letters(self, subscription: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        """Peek at the ``<topic>-dead-letter`` subscriptions: each message read is released again at once."""
        with self._lock:
            spec = self._specs.get(subscription or "")
            topics = [str(spec.topic)] if spec else [*{str(s.topic) for s in self._specs.values()}, *map(str, Topic)]
        return self._dead_letters.peek(topics, subscription=subscription, limit=limit)

    def redrive(self, subscription: str) -> int:
        """Publish a subscription's dead letters to its topic again; each subscription skips what it applied."""
        spec = self._specs.get(subscription)
        if spec is None:
            raise PermanentError(f"subscription {subscription!r} was never ensured on this bus",
                                 reason=Reason.INTERNAL, hint="Run `release setup` first.")
        sent = self._dead_letters.redrive(topic=str(spec.topic), subscription=spec.name)
        for message_id in sent:
            self._await_everywhere(str(spec.topic), message_id)
        return len(sent)

    def close(self) -> None:
        """Stop the subscribers and the publisher; idempotent. What this process holds is nacked, so it comes
        back at once instead of after its lease."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            consumers = list(self._consumers.values())
            self._consumers.clear()
        for consumer in consumers:
            consumer.future.cancel()
            try:
                consumer.future.result(timeout=self._publish_timeout_s)
            except Exception as e:  # shutting down: a stream that ended badly changes nothing
                log.info("pubsub.subscriber_closed_with_error", error=str(e))
            held = [raw.ack_id for raw in consumer.leased.values()]
            while not consumer.buffer.empty():
                held.append(consumer.buffer.get_nowait()[0].ack_id)
            if held:
                # A direct call: the stopped subscriber's own nack queue is no longer processed.
                try:
                    self._subscriber.modify_ack_deadline(subscription=self.subscription_path(consumer.spec.name),
                                                         ack_ids=held, ack_deadline_seconds=0)
                except api_exceptions.GoogleAPICallError as e:
                    log.info("pubsub.nack_on_close_failed", error=str(e))  # the leases expire instead
        self._subscriber.close()
        self._publisher.stop()

    # ------------------------------------------------------------------------------------ helpers
    def _consumer(self, subscription: str) -> StreamConsumer:
        with self._lock:
            consumer = self._consumers.get(subscription)
            if consumer is not None:
                return consumer
            spec = self._specs.get(subscription)
            if spec is None:
                raise PermanentError(f"subscription {subscription!r} was never ensured on this bus",
                                     reason=Reason.INTERNAL,
                                     hint="Call ensure_subscription(spec) or `release setup` before pulling.")
            consumer = StreamConsumer(spec=spec, buffer=queue.Queue(maxsize=self._max_outstanding),
                                      awaited=self._awaited[subscription])
            flow_control = pubsub_v1.types.FlowControl(max_messages=self._max_outstanding,
                                                       max_lease_duration=spec.ack_deadline_s)
            with pubsub_errors(f"subscribe to {subscription}"):
                consumer.future = self._subscriber.subscribe(
                    self.subscription_path(subscription), callback=lambda raw: self._receive(consumer, raw),
                    flow_control=flow_control)
            self._consumers[subscription] = consumer
            return consumer

    def _receive(self, consumer: StreamConsumer, raw: PubSubMessage) -> None:
        """Subscriber thread: decode and buffer one delivery (flow control keeps the buffer from filling)."""
        with self._lock:
            consumer.awaited.arrive(raw.message_id, now=time.monotonic())
        try:
            event = decode(raw.data)
        except PermanentError as e:
            # Never dropped: nacked until Pub/Sub's dead-letter policy moves it aside.
            log.warning("pubsub.undecodable_message", subscription=consumer.spec.name,
                        message_id=raw.message_id, error=str(e))
            raw.nack()
            return
        consumer.buffer.put((raw, event))

    def _await_everywhere(self, topic: str, message_id: str) -> None:
        until = time.monotonic() + AWAIT_GRACE_S
        with self._lock:
            for name, spec in self._specs.items():
                if str(spec.topic) == topic:
                    self._awaited[name].expect(message_id, until=until)

    def _release(self, message: Message) -> PubSubMessage | None:
        with self._lock:
            consumer = self._consumers.get(message.subscription)
            return None if consumer is None else consumer.leased.pop(message.handle, None)

    def _raise_if_stopped(self, subscription: str, consumer: StreamConsumer) -> None:
        if not consumer.future.done():
            return
        with self._lock:
            self._consumers.pop(subscription, None)  # the next pull starts a new subscriber
        error = consumer.future.exception()
        if error is not None:
            raise_pubsub_error(error, f"streaming pull of {subscription}")
