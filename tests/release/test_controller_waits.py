"""The controller never waits: pods, canary windows and rollout slots are waited for with due events, not sleeps."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from release import journal, registry
from release.db import session_scope
from release.outcomes import disposition
from release.testing import FakeServing
from release.worker import Consumer, run_until_idle
from schemas.error_table import retry_after
from schemas.errors import BadRequest, Reschedule
from schemas.events import EventType, ReconcileDueData, Topic, make_event
from schemas.policy import CanaryStep, ReleasePolicy, RolloutPolicy, Strategy
from schemas.tables import AuditEntry, CanaryStepRecord, Delivery, EventRecord, ModelVersion, utcnow
from tests.release.controller_harness import build, end_state
from tests.release.registrations import register_version

QUICK_CANARY = ReleasePolicy(rollout=RolloutPolicy(strategy=Strategy.CANARY, steps=[
    CanaryStep(weight=10, watch_s=0), CanaryStep(weight=100, watch_s=0)])).model_dump(mode="json")


class Clock:
    """The controller's clock, moved on by the test."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def _state(engine: Engine, version: str, model: str = "digits") -> str:
    with session_scope(engine) as s:
        return str(registry.get_version(s, model, version).state)


def _pending_due(engine: Engine) -> list[Delivery]:
    with session_scope(engine) as s:
        return list(s.exec(select(Delivery).join(EventRecord, col(EventRecord.seq) == col(Delivery.event_seq))
                           .where(EventRecord.type == EventType.RECONCILE_DUE)
                           .where(Delivery.status == "pending")).all())


def _drain_ready(consumer: Consumer) -> int:
    """Handle what is deliverable now, without waiting for delayed deliveries."""
    handled = 0
    while (n := consumer.drain_once()):
        handled += n
    return handled


def test_pods_not_ready_yet_are_looked_at_again_by_a_due_event(tmp_path: Path) -> None:
    """Slow pods leave the version DEPLOYING with a due event pending, and no step ever blocks on them."""
    serving = FakeServing(slow={"1"})
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", serving=serving)
    register_version(engine, bus, "1")
    _drain_ready(consumer)
    assert _state(engine, "1") == "DEPLOYING"
    (due,) = _pending_due(engine)
    assert due.available_at > utcnow() - timedelta(seconds=1)  # held back by the bus, not slept through
    serving.slow.clear()
    run_until_idle([consumer], bus=bus)
    assert _state(engine, "1") == "LIVE" and bus.dead_letters() == []


def test_each_poll_is_a_fresh_message_so_waiting_uses_up_no_attempts(tmp_path: Path) -> None:
    """Every look at slow pods comes in its own due event, delivered once: waiting never nears dead-lettering."""
    serving = FakeServing(slow={"1"})
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", serving=serving)
    register_version(engine, bus, "1")
    deadline = time.monotonic() + 60
    while serving.checks < 5 and time.monotonic() < deadline:
        consumer.drain_once(wait_s=0.5)
    with session_scope(engine) as s:
        polls = s.exec(select(Delivery).join(EventRecord, col(EventRecord.seq) == col(Delivery.event_seq))
                       .where(EventRecord.type == EventType.RECONCILE_DUE)).all()
    assert serving.checks >= 5 and len(polls) >= 4 and bus.dead_letters() == []
    assert all(p.attempts <= 1 for p in polls) and _state(engine, "1") == "DEPLOYING"


def test_pods_still_not_ready_past_the_timeout_fail_with_the_log(tmp_path: Path) -> None:
    """Past ready_timeout_s since DEPLOYING, the next look fails the version with the pods' log excerpt."""
    clock = Clock()
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", serving=FakeServing(slow={"1"}),
                                               clock=clock)
    register_version(engine, bus, "1")
    _drain_ready(consumer)
    assert _state(engine, "1") == "DEPLOYING"
    clock.offset = timedelta(seconds=RolloutPolicy().ready_timeout_s + 1)
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        view = registry.get_version(s, "digits", "1")
        deployment = registry.get_deployment(s, view.id)
    assert view.state == "FAILED" and deployment is not None and "cannot load model.pt" in deployment.log_excerpt


def test_an_early_due_event_is_handed_back_with_its_delay(tmp_path: Path) -> None:
    """A due event delivered early (Pub/Sub cannot delay) is nacked for the time left: one attempt, no dead letter."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    run_until_idle([consumer], bus=bus)
    due_at = utcnow() + timedelta(seconds=30)
    event = make_event(EventType.RECONCILE_DUE, ReconcileDueData(model="digits", version="1", due_at=due_at))
    with pytest.raises(Reschedule) as raised:
        controller.handle(event)
    outcome = disposition(raised.value)
    assert not outcome.ack and outcome.http_status == 429 and 29 < outcome.delay_s <= 30
    assert retry_after(raised.value) == "30"
    with session_scope(engine) as s:
        bus.publish(event, topic=Topic.MODEL_EVENTS, session=s)  # published without not_before, like Pub/Sub
    consumer.drain_once()
    with session_scope(engine) as s:
        row = s.exec(select(Delivery).join(EventRecord, col(EventRecord.seq) == col(Delivery.event_seq))
                     .where(EventRecord.event_id == event.id)).one()
    assert (row.status, row.attempts) == ("pending", 1) and row.available_at >= due_at - timedelta(seconds=1)


def test_duplicated_and_reordered_due_and_canary_events_change_nothing(tmp_path: Path) -> None:
    """Replaying a canary release's events backwards leaves the states, the steps and the journal unchanged."""
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    register_version(engine, bus, "1")
    register_version(engine, bus, "2", policy=QUICK_CANARY)
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        events = [journal.to_event(r) for r in journal.recent(s, limit=1000)]
        steps = [(r.step, r.result is not None) for r in s.exec(select(CanaryStepRecord)).all()]
    assert steps == [(0, True), (1, True)]
    assert {"dev.modelrelease.canary.step.v1", "dev.modelrelease.version.reconcile_due.v1"} <= {e.type for e in events}
    before = end_state(engine)
    for event in [*events, *reversed(events)]:
        controller.handle(event)
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        assert len(journal.recent(s, limit=1000)) == len(events)
        assert len(s.exec(select(CanaryStepRecord)).all()) == 2
    assert end_state(engine) == before and before["digits"]["aliases"]["PROD"] == "2"


@pytest.mark.parametrize("point", ["PROMOTING:step_started", "PROMOTING:judged"])
def test_sigkill_between_a_canary_step_start_and_its_judgement_converges(point: str, tmp_path: Path) -> None:
    """A controller killed inside a canary step and started again judges each step once and ends where it should."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine, bus, _c, _consumer = build(url)
    register_version(engine, bus, "good")
    register_version(engine, bus, "next", policy=QUICK_CANARY)
    run = [sys.executable, "-m", "tests.release.controller_harness", url]
    crashed = subprocess.run([*run, point], check=False, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    restarted = subprocess.run(run, check=True, capture_output=True, text=True, timeout=120)
    assert json.loads(restarted.stdout)["digits"] == {"versions": {"good": "LIVE", "next": "LIVE"},
                                                      "aliases": {"PROD": "next", "STG": "next"}}
    with session_scope(engine) as s:
        rows = s.exec(select(CanaryStepRecord).order_by(col(CanaryStepRecord.step))).all()
        assert [(r.step, r.weight, r.result is not None) for r in rows] == [(0, 10, True), (1, 100, True)]
        assert registry.route_weights(s, "digits") == {}


def test_tick_wakes_a_version_whose_due_event_was_lost(tmp_path: Path) -> None:
    """With its due event gone the version would stay DEPLOYING; a tick after the stale threshold wakes it."""
    clock = Clock()
    serving = FakeServing(slow={"1"})
    engine, bus, controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", serving=serving, clock=clock)
    register_version(engine, bus, "1")
    _drain_ready(consumer)
    with session_scope(engine) as s:
        for delivery in _pending_due(engine):
            delivery.status = "acked"
            s.add(delivery)
    serving.slow.clear()
    run_until_idle([consumer], bus=bus)
    assert _state(engine, "1") == "DEPLOYING"
    assert controller.tick() == 0  # it moved recently: not stale yet
    clock.offset = timedelta(seconds=31)
    assert controller.tick() == 1
    run_until_idle([consumer], bus=bus)
    assert _state(engine, "1") == "LIVE"


def test_versions_beyond_the_rollout_bound_wait_registered_in_arrival_order(tmp_path: Path) -> None:
    """With one slot, later versions stay REGISTERED until the one in flight settles, then go in order."""
    serving = FakeServing(slow={"0"})
    engine, bus, _controller, consumer = build(f"sqlite:///{tmp_path / 'c.db'}", serving=serving, max_rollouts=1)
    for n in range(3):
        register_version(engine, bus, str(n), model=f"m{n}")
    _drain_ready(consumer)
    assert [_state(engine, str(n), f"m{n}") for n in range(3)] == ["DEPLOYING", "REGISTERED", "REGISTERED"]
    serving.slow.clear()
    run_until_idle([consumer], bus=bus)
    with session_scope(engine) as s:
        entries = s.exec(select(AuditEntry).where(AuditEntry.action == "version.state_changed")
                         .order_by(col(AuditEntry.id))).all()
        moves = [e.model for e in entries if (e.details or {}).get("to") == "DEPLOYING"]
    assert moves == ["m0", "m1", "m2"]
    assert [_state(engine, str(n), f"m{n}") for n in range(3)] == ["LIVE"] * 3


def test_the_rollout_bound_holds_with_two_controllers_racing(postgres_url: str) -> None:
    """Two controllers on one PostgreSQL never have more versions in flight than the bound, and all settle."""
    from tests.conftest import pg_schema_engine

    schemas = pg_schema_engine(postgres_url)
    _engine, url = next(schemas)
    try:
        serving = FakeServing(slow={str(n) for n in range(6)})
        first = build(url, serving=serving, max_rollouts=2)
        second = build(url, serving=serving, max_rollouts=2)
        engine = first[0]
        for n in range(6):
            register_version(engine, first[1], str(n), model=f"m{n}")
        seen: list[int] = []
        stop = threading.Event()

        def consume(consumer: Consumer) -> None:
            while not stop.is_set():
                consumer.drain_once(wait_s=0.1)

        threads = [threading.Thread(target=consume, args=(c[3],)) for c in (first, second)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with session_scope(engine) as s:
                states = [str(v) for v in s.exec(select(ModelVersion.state)).all()]
            seen.append(sum(st in ("DEPLOYING", "STAGED", "EVALUATING", "PROMOTING") for st in states))
            if sorted(states) == ["DEPLOYING"] * 2 + ["REGISTERED"] * 4:
                break
        serving.slow.clear()
        while time.monotonic() < deadline:
            with session_scope(engine) as s:
                states = [str(v) for v in s.exec(select(ModelVersion.state)).all()]
            seen.append(sum(st in ("DEPLOYING", "STAGED", "EVALUATING", "PROMOTING") for st in states))
            if states == ["LIVE"] * 6:
                break
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert max(seen) == 2 and states == ["LIVE"] * 6
    finally:
        schemas.close()


def test_a_malformed_due_event_is_settled_as_invalid(tmp_path: Path) -> None:
    """A due event without a due time is refused as event_invalid and acked, not retried until dead-lettered."""
    _engine, _bus, controller, _consumer = build(f"sqlite:///{tmp_path / 'c.db'}")
    event = make_event(EventType.RECONCILE_DUE, {"model": "digits", "version": "1"})
    with pytest.raises(BadRequest, match="malformed") as raised:
        controller.handle(event)
    assert raised.value.reason == "event_invalid" and disposition(raised.value).ack
