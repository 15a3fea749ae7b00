"""Writing a version's state move: the one place the controller's decisions are applied to the store.

A move is ONE transaction: compare-and-swap the state (a view that went stale loses the race and changes
nothing), run the caller's extra writes, free the version's rollout slot when it leaves flight
(``release.rollout_slots``), record the deployment and the audit trail, and publish the events that
follow through the outbox, so they are delivered if and only if the move commits. The helpers below the applier
are the extra writes a step may add to that transaction (an alias move, displacing another version, an intent);
they take the caller's session and never commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session

from release import registry, rollout_slots
from release.db import session_scope
from release.ports import EventBus
from release.registry import VersionView
from release.rollout_slots import IN_FLIGHT
from schemas.errors import InvalidTransition
from schemas.events import AliasMovedData, CloudEvent, EventType, StateChangedData, Topic, make_event
from schemas.states import VersionState
from schemas.tables import ModelVersion

log = structlog.get_logger(__name__)

#: The actor of moves the controller makes on its own.
SYSTEM = "controller"


@dataclass(frozen=True)
class Step:
    """What one reconcile did."""

    model: str
    version: str
    before: VersionState
    after: VersionState
    note: str = ""


class TransitionApplier:
    """Applies state moves in one transaction each, with their records and outgoing events."""

    def __init__(self, *, engine: Engine, bus: EventBus, backend: str, fault: Callable[[str], None]) -> None:
        self._engine = engine
        self._bus = bus
        self._backend = backend
        self._fault = fault

    def move(self, view: VersionView, to: VersionState, *, reason: str, extra: list[CloudEvent] | None = None,
             also: Callable[[Session], list[CloudEvent]] | None = None, intent: str | None = None,
             deployment: tuple[str, tuple[str, ...], str] | None = None,
             audit: tuple[str, str] | None = None, actor: str = SYSTEM) -> Step:
        """One transaction: CAS the state, run ``also``, record, publish. A lost race is a no-op."""
        self._fault(f"{view.state}:before_commit")
        try:
            with session_scope(self._engine) as session:
                moved, before = registry.transition(session, model=view.model, version=view.version, to=to,
                                                    expect=view.state, reason=reason)
                if intent is not None:
                    set_intent(session, moved, intent)
                events = list(extra or [])
                if also is not None:
                    events += also(session)
                if to not in IN_FLIGHT:
                    events += rollout_slots.release(session, version_id=view.id)
                if deployment is not None:
                    status, endpoints, excerpt = deployment
                    registry.record_deployment(session, version_id=view.id, backend=self._backend,
                                               status=status, endpoints=endpoints, log_excerpt=excerpt)
                if audit is not None:
                    registry.audit(session, actor=actor, action=audit[0], model=view.model, version=view.version,
                                   reason=audit[1])
                registry.audit(session, actor=actor, action="version.state_changed", model=view.model,
                               version=view.version, reason=reason,
                               details={"from": str(before), "to": str(to)})
                data = StateChangedData(model=view.model, version=view.version, version_id=view.id,
                                        previous=before, state=to, reason=reason)
                events.append(make_event(EventType.VERSION_STATE_CHANGED, data,
                                         event_id=f"state-{view.id}-{view.revision + 1}"))
                self.publish(session, events)
        except InvalidTransition:
            with session_scope(self._engine) as session:
                now = registry.get_version(session, view.model, view.version)
            if now.revision == view.revision:
                raise  # not a race: the edge itself is wrong, which is a bug worth seeing
            log.info("controller.step_lost_race", state=str(view.state), target=str(to))
            return Step(view.model, view.version, view.state, now.state, note="lost race")
        self._fault(f"{view.state}:after_commit")
        log.info("version.state_changed", previous=str(before), state=str(to), reason=reason)
        return Step(view.model, view.version, before, to, note=reason)

    def publish(self, session: Session, events: list[CloudEvent]) -> None:
        """Put events in the caller's transaction: they go out if and only if it commits."""
        for event in events:
            self._bus.publish(event, topic=Topic.MODEL_EVENTS, session=session)


def alias_moved(session: Session, view: VersionView, alias: str, *, expected_revision: int | None = None,
                actor: str = SYSTEM, reason: str = "") -> CloudEvent:
    """Point ``alias`` at the version (revision-checked when ``expected_revision`` is given); the event to publish."""
    moved, previous = registry.move_alias(session, model=view.model, alias=alias, version=view.version,
                                          expected_revision=expected_revision, actor=actor,
                                          reason=reason or f"{alias} -> {view.version}")
    data = AliasMovedData(model=view.model, alias=alias, version=view.version, previous_version=previous,
                          revision=moved.revision, actor=actor, reason=reason)
    return make_event(EventType.ALIAS_MOVED, data, event_id=f"alias-{view.model}-{alias}-{moved.revision}")


def displace(session: Session, model: str, version: str, *, to: VersionState, why: str) -> list[CloudEvent]:
    """Move another version out of the way (a restore displaces the PROD it replaces); its state event."""
    other, before = registry.transition(session, model=model, version=version, to=to, reason=why)
    data = StateChangedData(model=model, version=version, version_id=other.id, previous=before, state=to,
                            reason=why)
    return [make_event(EventType.VERSION_STATE_CHANGED, data, event_id=f"state-{other.id}-{other.revision}")]


def set_intent(session: Session, view: VersionView, intent: str) -> None:
    """Record why the version is being released (``promote``, ``restore``, or none: the normal path)."""
    row = session.get(ModelVersion, view.id)
    assert row is not None
    row.intent = intent
    session.add(row)
