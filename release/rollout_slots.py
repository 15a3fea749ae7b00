"""The rollout bound: at most ``max_rollouts`` versions hold pods while in flight (DEPLOYING..PROMOTING).

A version claims a slot in the transaction that moves it REGISTERED -> DEPLOYING and frees it in the one that
moves it out of flight, so a count never drifts from the states. The slot number is the table's primary key:
two controllers that both see slot 2 free both insert it, and only one commits (PostgreSQL makes the second
wait for the first, then refuses it), so the bound holds however many controllers race. Waiting versions go
in arrival order: one is let in only while fewer versions registered before it are still waiting than slots
are free. Freeing a slot wakes the oldest waiting version at once, in the same transaction.
"""

from __future__ import annotations

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from schemas.events import CloudEvent, EventType, ReconcileDueData, make_event
from schemas.states import VersionState
from schemas.tables import Model, ModelVersion, RolloutSlot, utcnow

S = VersionState
#: The states in which a version holds a slot.
IN_FLIGHT = frozenset({S.DEPLOYING, S.STAGED, S.EVALUATING, S.PROMOTING})


class NoSlot(Exception):
    """Every slot is taken, or versions registered earlier are waiting for the free ones."""


def claim(session: Session, *, version_id: int, limit: int) -> int:
    """Take a free slot for the version in the caller's transaction; its number. ``NoSlot`` when none is due."""
    own = session.exec(select(RolloutSlot.slot).where(RolloutSlot.version_id == version_id)).first()
    if own is not None:
        return own
    taken = set(session.exec(select(RolloutSlot.slot)).all())
    free = [slot for slot in range(limit) if slot not in taken]
    ahead = session.exec(select(func.count()).select_from(ModelVersion)
                         .where(ModelVersion.state == S.REGISTERED)
                         .where(col(ModelVersion.id) < version_id)).one()
    if len(free) <= int(ahead):
        raise NoSlot(f"{len(taken)} of {limit} rollouts in flight, {ahead} version(s) waiting before this one")
    session.add(RolloutSlot(slot=free[0], version_id=version_id, claimed_at=utcnow()))
    session.flush()  # a slot another controller took meanwhile fails here, inside the caller's transaction
    return free[0]


def release(session: Session, *, version_id: int) -> list[CloudEvent]:
    """Free the version's slot, if it holds one; the due event that wakes the oldest waiting version."""
    freed = session.execute(delete(RolloutSlot).where(col(RolloutSlot.version_id) == version_id))
    if not freed.rowcount:  # type: ignore[attr-defined]
        return []
    return wake_oldest(session, reason=f"slot freed by version id {version_id}")


def wake_oldest(session: Session, *, reason: str) -> list[CloudEvent]:
    """A due reconcile for the version that has waited longest for a slot (none when nobody waits)."""
    row = session.exec(select(ModelVersion, Model.name).join(Model, col(Model.id) == col(ModelVersion.model_id))
                       .where(ModelVersion.state == S.REGISTERED).order_by(col(ModelVersion.id))).first()
    if row is None:
        return []
    version, model = row
    now = utcnow()
    data = ReconcileDueData(model=model, version=version.version, due_at=now, why=reason)
    return [make_event(EventType.RECONCILE_DUE, data,
                       event_id=f"due-{version.id}-{version.revision}-wake-{round(now.timestamp() * 1000)}")]


def sweep(session: Session) -> int:
    """Free slots held by versions no longer in flight (a safety net: every move out of flight frees its own)."""
    stale = select(RolloutSlot.version_id).join(ModelVersion, col(ModelVersion.id) == col(RolloutSlot.version_id)) \
        .where(col(ModelVersion.state).not_in(list(IN_FLIGHT)))
    ids = list(session.exec(stale).all())
    if ids:
        session.execute(delete(RolloutSlot).where(col(RolloutSlot.version_id).in_(ids)))
    return len(ids)


def holders(session: Session) -> int:
    """How many slots are taken."""
    return int(session.exec(select(func.count()).select_from(RolloutSlot)).one())
