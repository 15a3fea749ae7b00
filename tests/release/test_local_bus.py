"""The embedded bus on SQLite and PostgreSQL: outbox, at-least-once, redelivery, dead letters, de-dup."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sqlalchemy.engine import Engine

from release.adapters.local_bus import LocalEventBus
from release.db import session_factory, session_scope
from release.ports import SubscriptionSpec
from schemas.events import EventType, Topic, make_event


def _bus(engine: Engine, *, max_attempts: int = 3, deadline: float = 30.0) -> LocalEventBus:
    bus = LocalEventBus(session_factory=session_factory(engine))
    bus.ensure_subscription(SubscriptionSpec(name="sub", topic=Topic.MODEL_EVENTS, ack_deadline_s=deadline,
                                             max_attempts=max_attempts))
    return bus


def _event(n: int = 1):
    return make_event(EventType.MODEL_REGISTERED, {"model": "m", "version": str(n)}, event_id=f"e{n}")


def test_published_only_when_the_transaction_commits(engine: Engine) -> None:
    """An event published in a transaction that rolls back is never delivered."""
    bus = _bus(engine)
    try:
        with session_scope(engine) as s:
            bus.publish(_event(1), topic=Topic.MODEL_EVENTS, session=s)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with session_scope(engine) as s:
        bus.publish(_event(2), topic=Topic.MODEL_EVENTS, session=s)
    messages = bus.pull("sub", max_messages=10)
    assert [m.event.id for m in messages] == ["e2"]


def test_ack_removes_and_nack_redelivers(engine: Engine) -> None:
    """An acked delivery is gone; a nacked one comes back with the attempt counted."""
    bus = _bus(engine)
    with session_scope(engine) as s:
        bus.publish(_event(1), topic=Topic.MODEL_EVENTS, session=s)
        bus.publish(_event(2), topic=Topic.MODEL_EVENTS, session=s)
    first, second = bus.pull("sub", max_messages=10)
    bus.ack(first)
    bus.nack(second, error="try later")
    again = bus.pull("sub", max_messages=10)
    assert [(m.event.id, m.attempt) for m in again] == [("e2", 2)]
    bus.ack(again[0])
    assert bus.backlog("sub") == 0


def test_expired_lease_is_redelivered(engine: Engine) -> None:
    """A delivery not acked before its deadline is delivered again (at-least-once)."""
    bus = _bus(engine, deadline=0.0)
    with session_scope(engine) as s:
        bus.publish(_event(1), topic=Topic.MODEL_EVENTS, session=s)
    assert [m.attempt for m in bus.pull("sub")] == [1]
    assert [m.attempt for m in bus.pull("sub")] == [2]


def test_publishing_the_same_event_id_twice_delivers_once(engine: Engine) -> None:
    """A retried producer step that republishes an event id does not duplicate the delivery."""
    bus = _bus(engine)
    for _ in range(2):
        with session_scope(engine) as s:
            bus.publish(_event(1), topic=Topic.MODEL_EVENTS, session=s)
    assert len(bus.pull("sub", max_messages=10)) == 1


def test_every_subscription_gets_its_own_copy(engine: Engine) -> None:
    """Fan-out: two subscriptions on a topic each receive every event."""
    bus = _bus(engine)
    bus.ensure_subscription(SubscriptionSpec(name="other", topic=Topic.MODEL_EVENTS))
    with session_scope(engine) as s:
        bus.publish(_event(1), topic=Topic.MODEL_EVENTS, session=s)
    assert len(bus.pull("sub")) == 1 and len(bus.pull("other")) == 1


def test_lease_of_a_killed_consumer_is_taken_back_at_once(db: tuple[Engine, str]) -> None:
    """A consumer process SIGKILLed while holding a lease does not delay redelivery until the deadline."""
    engine, url = db
    bus = _bus(engine, deadline=3600)
    with session_scope(engine) as s:
        bus.publish(_event(1), topic=Topic.MODEL_EVENTS, session=s)
    script = textwrap.dedent(f"""
        import os, signal
        from release.db import make_engine, session_factory
        from release.adapters.local_bus import LocalEventBus
        bus = LocalEventBus(session_factory=session_factory(make_engine({url!r})))
        assert len(bus.pull("sub")) == 1
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert proc.returncode == -9
    assert [m.attempt for m in bus.pull("sub")] == [2]


def test_two_consumers_never_lease_the_same_delivery(db: tuple[Engine, str]) -> None:
    """Concurrent consumers in separate processes split the work without overlap."""
    engine, url = db
    bus = _bus(engine)
    with session_scope(engine) as s:
        for n in range(40):
            bus.publish(_event(n), topic=Topic.MODEL_EVENTS, session=s)
    script = textwrap.dedent(f"""
        from release.db import make_engine, session_factory
        from release.adapters.local_bus import LocalEventBus
        bus = LocalEventBus(session_factory=session_factory(make_engine({url!r})))
        seen = []
        while batch := bus.pull("sub", max_messages=3):
            for m in batch:
                seen.append(m.event.id)
                bus.ack(m)
        print(",".join(seen))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    ids = [i for out in outputs for i in out.split(",") if i]
    assert sorted(ids) == sorted(f"e{n}" for n in range(40))
