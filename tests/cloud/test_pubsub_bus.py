"""The Pub/Sub EventBus with the real google-cloud-pubsub client against a Pub/Sub gRPC server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from google.cloud import pubsub_v1
from sqlmodel import Session

from release import journal
from release.adapters.pubsub_bus import PubSubEventBus
from release.adapters.pubsub_wire import decode, encode
from release.ports import SubscriptionSpec
from schemas.errors import PermanentError, Reason
from schemas.events import CloudEvent, EventType, Topic, make_event
from tests.cloud.conftest import PROJECT, pull_until, raw_pull

SPEC = SubscriptionSpec(name="controller", topic=Topic.MODEL_EVENTS, ack_deadline_s=60, max_attempts=3)


def _event(model: str | None, n: int) -> CloudEvent:
    data: dict[str, Any] = {"n": n} if model is None else {"model": model, "version": "1", "n": n}
    return make_event(EventType.DRIFT_MEASURED, data)


def _commit(bus: PubSubEventBus, session_factory: Callable[[], Session], *events: CloudEvent,
            topic: Topic = Topic.MODEL_EVENTS) -> None:
    with session_factory() as session:
        for event in events:
            bus.publish(event, topic=topic, session=session)
        session.commit()


def test_journalled_event_is_relayed_and_delivered_once(bus, session_factory):
    """publish journals only; flush relays, marks the row published, and the event arrives exactly once."""
    bus.ensure_subscription(SPEC)
    event = _event("digits", 1)
    _commit(bus, session_factory, event)
    assert bus.backlog("controller") == 1  # journalled, not relayed yet

    assert bus.flush() == 1
    with session_factory() as session:
        assert journal.unpublished(session) == []
    [message] = pull_until(bus, "controller", count=1)
    assert message.event == event
    assert message.attempt == 1
    assert bus.flush() == 0
    assert bus.pull("controller", max_messages=10, wait_s=0.5) == []
    assert bus.backlog("controller") == 0


def test_rolled_back_publish_is_never_relayed(bus, session_factory):
    """An event whose transaction rolls back never reaches Pub/Sub (transactional outbox)."""
    bus.ensure_subscription(SPEC)
    with session_factory() as session:
        bus.publish(_event("digits", 1), topic=Topic.MODEL_EVENTS, session=session)
        session.rollback()
    assert bus.flush() == 0
    assert bus.pull("controller", wait_s=0.3) == []


def test_wire_format_is_structured_body_with_binary_mode_attributes(bus, session_factory, raw_subscriber,
                                                                   prefix):
    """The body is the whole CloudEvent as JSON; ce-* attributes repeat its context; the key is the model."""
    bus.ensure_subscription(SPEC)
    event = _event("digits", 7)
    _commit(bus, session_factory, event)
    bus.flush()
    [received] = raw_pull(raw_subscriber, bus.subscription_path("controller"), count=1)
    message = received.message
    assert json.loads(message.data) == event.model_dump(mode="json")
    assert message.attributes["content-type"] == "application/cloudevents+json"
    assert message.attributes["ce-id"] == event.id
    assert message.attributes["ce-type"] == EventType.DRIFT_MEASURED
    assert message.attributes["ce-source"] == event.source
    assert message.attributes["ce-specversion"] == "1.0"
    assert message.attributes["ce-subject"] == "models/digits/versions/1"
    assert message.attributes["ce-time"] == event.model_dump(mode="json")["time"]
    assert message.ordering_key == "digits"
    assert bus.topic_path(Topic.MODEL_EVENTS) == f"projects/{PROJECT}/topics/{prefix}model-events"


def test_events_about_one_model_stay_in_order(bus, session_factory):
    """Per model, events arrive in publish order even when one of them is nacked and redelivered."""
    bus.ensure_subscription(SPEC)
    events = [_event(model, n) for n in range(10) for model in ("a", "b")]
    _commit(bus, session_factory, *events)
    bus.flush()
    seen: dict[str, list[int]] = {"a": [], "b": []}
    nacked = False
    deadline = time.monotonic() + 15
    while sum(map(len, seen.values())) < len(events) and time.monotonic() < deadline:
        for message in bus.pull("controller", max_messages=5, wait_s=0.2):
            model, n = message.event.model, message.event.data["n"]
            if model == "a" and n == 3 and not nacked:
                nacked = True
                bus.nack(message, error="try again")
                continue
            assert model is not None
            seen[model].append(n)
            bus.ack(message)
    assert nacked
    assert seen == {"a": list(range(10)), "b": list(range(10))}


def test_nack_redelivers_with_the_next_attempt(bus, session_factory):
    """A nacked delivery comes back with attempt + 1; the error does not drop it."""
    bus.ensure_subscription(SPEC)
    _commit(bus, session_factory, _event("digits", 1))
    bus.flush()
    [first] = pull_until(bus, "controller", count=1, ack=False)
    bus.nack(first, error="TemporaryError: not yet")
    [second] = pull_until(bus, "controller", count=1)
    assert second.event.id == first.event.id
    assert (first.attempt, second.attempt) == (1, 2)


def test_nack_with_delay_waits_and_counts_in_backlog(bus, session_factory):
    """nack(delay_s) holds the redelivery back for the delay; meanwhile backlog still counts the event."""
    bus.ensure_subscription(SPEC)
    _commit(bus, session_factory, _event("digits", 1))
    bus.flush()
    [first] = pull_until(bus, "controller", count=1, ack=False)
    nacked_at = time.monotonic()
    bus.nack(first, error="later", delay_s=2)
    assert bus.backlog("controller") == 1
    [again] = pull_until(bus, "controller", count=1, timeout_s=15)
    assert time.monotonic() - nacked_at >= 1.5
    assert again.event.id == first.event.id
    assert bus.backlog("controller") == 0


def test_last_attempt_goes_to_dead_letter_topic_with_its_error(bus, session_factory, raw_subscriber):
    """After max_attempts nacks the event is on <topic>-dead-letter with the error, and never redelivered."""
    bus.ensure_subscription(SPEC)
    event = _event("digits", 1)
    _commit(bus, session_factory, event)
    bus.flush()
    for attempt in range(1, SPEC.max_attempts + 1):
        [message] = pull_until(bus, "controller", count=1, ack=False)
        assert message.attempt == attempt
        bus.nack(message, error=f"ValueError: bad {attempt}")
    [dead] = raw_pull(raw_subscriber, bus.subscription_path("model-events-dead-letter"), count=1)
    assert decode(dead.message.data) == event
    assert dead.message.attributes["error"] == f"ValueError: bad {SPEC.max_attempts}"
    assert dead.message.attributes["dead-letter-subscription"] == "controller"
    assert dead.message.attributes["ce-id"] == event.id
    assert bus.pull("controller", wait_s=0.5) == []
    assert bus.backlog("controller") == 0


def test_pubsub_dead_letter_policy_backs_up_consumers_that_never_nack(bus, session_factory, raw_subscriber):
    """A message nobody settles is dead-lettered by Pub/Sub itself after the clamped 5 attempts."""
    bus.ensure_subscription(SPEC)  # max_attempts=3 is clamped to Pub/Sub's minimum of 5 for the backstop
    _commit(bus, session_factory, _event("digits", 1))
    bus.flush()
    subscription = bus.subscription_path("controller")
    for attempt in range(1, 6):
        [received] = raw_pull_without_ack(raw_subscriber, subscription)
        assert received.delivery_attempt == attempt
        raw_subscriber.modify_ack_deadline(request={"subscription": subscription, "ack_ids": [received.ack_id],
                                                    "ack_deadline_seconds": 0})
    [dead] = raw_pull(raw_subscriber, bus.subscription_path("model-events-dead-letter"), count=1)
    assert dead.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"


def raw_pull_without_ack(subscriber: pubsub_v1.SubscriberClient, subscription: str) -> list[Any]:
    """One unary pull of one message, left unacknowledged."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 1}, timeout=5)
        if response.received_messages:
            return list(response.received_messages)
    return []


def test_flow_control_bounds_messages_in_flight(make_bus, session_factory):
    """With max_outstanding_messages=3 no more than 3 deliveries are held at once; an ack lets one more in."""
    bus = make_bus(max_outstanding_messages=3)
    bus.ensure_subscription(SPEC)
    _commit(bus, session_factory, *[_event(None, n) for n in range(10)])
    bus.flush()
    held = pull_until(bus, "controller", count=3, ack=False)
    assert len(held) == 3
    assert bus.pull("controller", max_messages=10, wait_s=0.5) == []
    bus.ack(held[0])
    more = pull_until(bus, "controller", count=1, ack=False)
    assert len(more) == 1
    assert bus.pull("controller", max_messages=10, wait_s=0.3) == []


def test_ensure_subscription_is_idempotent_and_clamps_to_pubsub_limits(bus, raw_subscriber):
    """ensure_subscription and setup run twice on fresh resources without error, with Pub/Sub's ranges."""
    spec = SubscriptionSpec(name="monitor", topic=Topic.DRIFT_METRICS, ack_deadline_s=2, max_attempts=500)
    bus.setup([Topic.ALERTS], [spec])
    bus.setup([Topic.ALERTS], [spec])
    bus.ensure_subscription(spec)
    config = raw_subscriber.get_subscription(subscription=bus.subscription_path("monitor"))
    assert config.topic == bus.topic_path(Topic.DRIFT_METRICS)
    assert config.ack_deadline_seconds == 10
    assert config.enable_message_ordering
    assert config.dead_letter_policy.dead_letter_topic == bus.topic_path("drift-metrics-dead-letter")
    assert config.dead_letter_policy.max_delivery_attempts == 100
    dead_letters = raw_subscriber.get_subscription(subscription=bus.subscription_path("drift-metrics-dead-letter"))
    assert dead_letters.topic == bus.topic_path("drift-metrics-dead-letter")


def test_crash_between_publish_and_mark_gives_a_duplicate_with_the_same_id(make_bus, session_factory,
                                                                           monkeypatch):
    """A relay dying after Pub/Sub accepted but before the mark republishes; the copies share the event id."""
    crashed = make_bus()
    crashed.ensure_subscription(SPEC)
    event = _event("digits", 1)
    _commit(crashed, session_factory, event)

    def crash(session: Session, seqs: object) -> None:
        raise SystemExit("killed between publish and mark")

    monkeypatch.setattr(journal, "mark_published", crash)
    with pytest.raises(SystemExit):
        crashed.flush()
    monkeypatch.undo()

    restarted = make_bus()
    restarted.ensure_subscription(SPEC)
    assert restarted.flush() == 1
    copies = pull_until(restarted, "controller", count=2)
    assert [m.event.id for m in copies] == [event.id, event.id]


def test_close_hands_back_what_it_held(make_bus, session_factory):
    """Closing a bus nacks the deliveries it held, so another consumer gets them at once."""
    first = make_bus()
    first.ensure_subscription(SPEC)
    _commit(first, session_factory, _event("digits", 1))
    first.flush()
    [held] = pull_until(first, "controller", count=1, ack=False)
    first.close()
    second = make_bus()
    second.ensure_subscription(SPEC)
    [again] = pull_until(second, "controller", count=1, timeout_s=5)
    assert again.event.id == held.event.id
    assert again.attempt == 2


def test_undecodable_message_is_dead_lettered_not_dropped(bus, raw_publisher, raw_subscriber):
    """A message that is not a CloudEvent is never handed out; it ends on the dead-letter topic."""
    bus.ensure_subscription(SPEC)
    raw_publisher.publish(bus.topic_path(Topic.MODEL_EVENTS), b"not json").result(timeout=10)
    assert bus.pull("controller", wait_s=1.0) == []
    [dead] = raw_pull(raw_subscriber, bus.subscription_path("model-events-dead-letter"), count=1)
    assert dead.message.data == b"not json"


def test_pull_before_ensure_subscription_is_refused(bus):
    """Pulling a subscription this bus never ensured fails with a hint instead of hanging."""
    with pytest.raises(PermanentError, match="never ensured"):
        bus.pull("nobody")


def test_encode_decode_round_trip_and_invalid_body():
    """encode/decode are inverse; a body that is not a CloudEvent is a PermanentError(EVENT_INVALID)."""
    event = _event("digits", 1)
    body, attributes = encode(event)
    assert decode(body) == event
    assert "ce-subject" in attributes
    no_subject = CloudEvent(type="t", data={})
    assert "ce-subject" not in encode(no_subject)[1]
    with pytest.raises(PermanentError) as caught:
        decode(b'{"id": 1}')
    assert caught.value.reason == Reason.EVENT_INVALID
