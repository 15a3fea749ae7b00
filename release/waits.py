"""Waiting without sleeping: a step that must wait publishes a due reconcile and returns at once.

Pods becoming ready, a canary's watch window, a free rollout slot: the step records what it did, publishes
``version.reconcile_due`` with ``due_at`` (delivered no earlier where the bus can delay; a consumer that gets it
early hands it back with ``Reschedule``) and acks its message. So one message is always one short step, which
is what a function (Cloud Run, functions-framework) needs, and each poll is a fresh message that cannot use up
the dead-letter attempts of another.

Polls fall on a grid anchored at the moment the version entered its state (0.25 s, 0.5 s, 1 s, then every
``cap_s``), and a due event's id names its grid point: two reconciles that decide to look again at the same
time publish the same event, which the journal keeps once, so duplicated events never multiply the polls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from release.db import session_scope
from release.ports import EventBus
from release.registry import VersionView
from release.transitions import Step
from schemas.errors import BadRequest, Reason, Reschedule
from schemas.events import CloudEvent, EventType, ReconcileDueData, Topic, make_event

#: The first gaps between polls, in seconds; after them every ``cap_s``.
FIRST_GAPS_S = (0.25, 0.5, 1.0)
#: A due event that arrives less than this early is handled: clocks of two machines never agree exactly.
EARLY_TOLERANCE_S = 0.05


def next_poll(since: datetime, now: datetime, *, cap_s: float = 2.0) -> datetime:
    """The first point of the poll grid anchored at ``since`` that lies after ``now``."""
    elapsed = (now - since).total_seconds()
    offset = 0.0
    for gap in FIRST_GAPS_S:
        offset += gap
        if offset > elapsed:
            return since + timedelta(seconds=offset)
    periods = math.floor((elapsed - offset) / cap_s) + 1
    return since + timedelta(seconds=offset + periods * cap_s)


def due_event(view: VersionView, due_at: datetime, *, why: str) -> CloudEvent:
    """The due reconcile of a version at ``due_at``; its id is the same for the same version, state and time."""
    data = ReconcileDueData(model=view.model, version=view.version, due_at=due_at, why=why)
    stamp = round(due_at.timestamp() * 1000)
    return make_event(EventType.RECONCILE_DUE, data, event_id=f"due-{view.id}-{view.revision}-{stamp}")


def check_due(event: CloudEvent, now: datetime) -> None:
    """Raise ``Reschedule`` when a due event came before its time (a bus that cannot delay a delivery)."""
    try:
        due_at = ReconcileDueData.model_validate(event.data).due_at
    except ValidationError as error:
        raise BadRequest(f"reconcile_due event {event.id} is malformed: {error}", reason=Reason.EVENT_INVALID,
                         hint="Publish due events with release.waits.due_event.") from error
    early_s = (due_at - now).total_seconds()
    if early_s > EARLY_TOLERANCE_S:
        raise Reschedule(f"{event.model}/{event.version} is due in {early_s:.2f}s", delay_s=early_s,
                         details={"due_at": due_at.isoformat()})


def publish_tick(engine: Engine, bus: EventBus, now: datetime) -> None:
    """Publish one tick on ``release-ticks``: what `release up`'s timer does, and a scheduler job in the cloud."""
    with session_scope(engine) as session:
        bus.publish(make_event(EventType.TICK, {"at": now.isoformat()}), topic=Topic.TICKS, session=session)


class Scheduler:
    """Publishes due reconciles for the controller."""

    def __init__(self, *, engine: Engine, bus: EventBus, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._bus = bus
        self._now = clock

    def later(self, view: VersionView, *, since: datetime, why: str, cap_s: float = 2.0) -> Step:
        """Look at the version again at its next poll point; the step that says it is waiting."""
        self.at(view, next_poll(since, self._now(), cap_s=cap_s), why=why)
        return Step(view.model, view.version, view.state, view.state, note=f"waiting: {why}")

    def at(self, view: VersionView, due_at: datetime, *, why: str, session: Session | None = None) -> None:
        """Look at the version again at ``due_at`` (in the caller's transaction when ``session`` is given)."""
        if session is not None:
            self.publish(session, due_event(view, due_at, why=why), due_at)
            return
        with session_scope(self._engine) as own:
            self.publish(own, due_event(view, due_at, why=why), due_at)

    def wake(self, session: Session, view: VersionView, *, why: str) -> None:
        """Look at the version again as soon as possible (a tick), in the caller's transaction."""
        self._bus.publish(due_event(view, self._now(), why=why), topic=Topic.MODEL_EVENTS, session=session)

    def publish(self, session: Session, event: CloudEvent, due_at: datetime) -> None:
        """Put a due event in the caller's transaction, delivered no earlier than ``due_at`` where possible."""
        self._bus.publish(event, topic=Topic.MODEL_EVENTS, session=session, not_before=due_at)
