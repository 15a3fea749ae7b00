"""The EventBus contract, one body for the in-memory fake, the local bus (SQLite, PostgreSQL) and Pub/Sub."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from release.ports import SubscriptionSpec
from schemas.events import CloudEvent, EventType, Topic, make_event
from tests.contracts.conftest import BusUnderTest

SPEC = SubscriptionSpec(name="contract", topic=Topic.MODEL_EVENTS, ack_deadline_s=30, max_attempts=1)


def _event(n: int) -> CloudEvent:
    return make_event(EventType.MODEL_REGISTERED, {"model": "m", "version": str(n)}, event_id=f"contract-{n}")


def _publish(under: BusUnderTest, *events: CloudEvent, commit: bool = True) -> None:
    with under.sessions() as session:
        for event in events:
            under.bus.publish(event, topic=Topic.MODEL_EVENTS, session=session)
        if commit:
            session.commit()
        else:
            session.rollback()


def test_an_event_is_delivered_only_when_its_transaction_commits(bus_under_test: BusUnderTest):
    """Publishing rides on the caller's transaction: a rolled-back publish is never delivered."""
    bus_under_test.bus.setup([Topic.MODEL_EVENTS], [SPEC])
    _publish(bus_under_test, _event(1), commit=False)
    _publish(bus_under_test, _event(2))
    (message,) = bus_under_test.pull_until("contract", count=1)
    assert message.event.id == "contract-2" and message.attempt == 1
    bus_under_test.bus.ack(message)
    assert bus_under_test.pull_until("contract", count=1, timeout_s=0.5) == []


def test_backlog_counts_what_is_not_settled(bus_under_test: BusUnderTest):
    """Backlog is zero only once every published event is acked: consumers use it to know they are idle."""
    bus = bus_under_test.bus
    bus.setup([Topic.MODEL_EVENTS], [SPEC])
    _publish(bus_under_test, _event(1), _event(2))
    assert bus.backlog("contract") == 2
    assert len(bus_under_test.pull_until("contract", count=2, ack=True)) == 2
    assert bus.backlog("contract") == 0


def test_the_last_failed_attempt_is_dead_lettered_with_its_error_and_can_be_redriven(bus_under_test: BusUnderTest):
    """A nack on the last attempt keeps the event aside with the error; a redrive delivers it afresh."""
    bus = bus_under_test.bus
    bus.setup([Topic.MODEL_EVENTS], [SPEC])
    _publish(bus_under_test, _event(1))
    (message,) = bus_under_test.pull_until("contract", count=1)
    bus.nack(message, error="ValueError: bad payload")
    assert bus.backlog("contract") == 0
    (letter,) = bus.dead_letters("contract")
    assert (letter.subscription, letter.event_id, letter.event_type) == (
        "contract", "contract-1", str(EventType.MODEL_REGISTERED))
    assert letter.error == "ValueError: bad payload" and letter.attempts == 1
    assert bus.dead_letters("contract") == [letter]  # looking does not consume

    assert bus.redrive("contract") == 1
    (again,) = bus_under_test.pull_until("contract", count=1)
    assert again.event.id == "contract-1" and again.attempt == 1
    bus.ack(again)
    assert bus.dead_letters("contract") == []


def test_setup_is_idempotent(bus_under_test: BusUnderTest):
    """Running setup twice creates nothing twice: one event still arrives once."""
    bus = bus_under_test.bus
    bus.setup([Topic.MODEL_EVENTS], [SPEC])
    bus.setup([Topic.MODEL_EVENTS], [SPEC])
    bus.ensure_subscription(SPEC)
    _publish(bus_under_test, _event(1))
    (message,) = bus_under_test.pull_until("contract", count=1)
    bus.ack(message)
    assert bus_under_test.pull_until("contract", count=1, timeout_s=0.5) == []


def test_a_stale_handle_is_ignored_and_close_is_idempotent(bus_under_test: BusUnderTest):
    """Settling a delivery twice changes nothing; closing twice is safe."""
    bus = bus_under_test.bus
    bus.setup([Topic.MODEL_EVENTS], [SPEC])
    _publish(bus_under_test, _event(1))
    (message,) = bus_under_test.pull_until("contract", count=1)
    bus.ack(message)
    bus.ack(message)
    bus.nack(message, error="late")
    assert bus.dead_letters("contract") == []
    bus.close()
    with contextlib.suppress(Exception):
        bus.close()


def test_a_delayed_publish_arrives_no_earlier_than_asked_where_the_bus_can_delay(bus_under_test: BusUnderTest):
    """``not_before`` holds a delivery back until then (a due reconcile); Pub/Sub, which cannot, delivers it now."""
    bus = bus_under_test.bus
    bus.setup([Topic.MODEL_EVENTS], [SPEC])
    not_before = datetime.now(UTC) + timedelta(seconds=1.0)
    with bus_under_test.sessions() as session:
        bus.publish(_event(1), topic=Topic.MODEL_EVENTS, session=session, not_before=not_before)
        session.commit()
    early = bus_under_test.pull_until("contract", count=1, timeout_s=0.3)
    assert len(early) == (0 if bus_under_test.delays else 1)
    (message,) = early or bus_under_test.pull_until("contract", count=1)
    if bus_under_test.delays:
        assert datetime.now(UTC) >= not_before
    assert message.event.id == "contract-1" and message.attempt == 1
    bus.ack(message)
