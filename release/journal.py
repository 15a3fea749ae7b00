"""The event journal (transactional outbox): events are rows written in their producer's transaction.

Both bus adapters publish through here, so ``release events`` lists every event whatever the transport, and an
event exists if and only if the state change that produced it committed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import update
from sqlmodel import Session, col, select

from schemas.events import CloudEvent, Topic
from schemas.tables import EventRecord, utcnow


def append(session: Session, event: CloudEvent, *, topic: Topic) -> EventRecord:
    """Add ``event`` to the journal in the caller's transaction; an event id already there is not added twice."""
    existing = session.exec(select(EventRecord).where(EventRecord.event_id == event.id)).first()
    if existing is not None:
        return existing
    row = EventRecord(
        event_id=event.id,
        topic=str(topic),
        type=event.type,
        subject=event.subject,
        model=event.model,
        envelope=event.model_dump(mode="json"),
    )
    session.add(row)
    session.flush()
    return row


def unpublished(session: Session, *, limit: int = 500,
                topics: Collection[str] | None = None) -> Sequence[EventRecord]:
    """Journalled events not yet handed to an external transport, oldest first (only of ``topics`` if given)."""
    query = select(EventRecord).where(col(EventRecord.published_at).is_(None))
    if topics is not None:
        query = query.where(col(EventRecord.topic).in_(sorted(topics)))
    return session.exec(query.order_by(col(EventRecord.seq)).limit(limit)).all()


def mark_published(session: Session, seqs: Sequence[int]) -> None:
    """Record that the transport accepted these events."""
    if seqs:
        session.execute(update(EventRecord).where(col(EventRecord.seq).in_(list(seqs)))
                        .values(published_at=utcnow()))


def recent(session: Session, *, limit: int = 100, model: str | None = None,
           topic: Topic | None = None) -> Sequence[EventRecord]:
    """The newest journalled events, newest last (what `release events` shows)."""
    query = select(EventRecord)
    if model is not None:
        query = query.where(EventRecord.model == model)
    if topic is not None:
        query = query.where(EventRecord.topic == str(topic))
    rows = session.exec(query.order_by(col(EventRecord.seq).desc()).limit(limit)).all()
    return list(reversed(rows))


def to_event(row: EventRecord) -> CloudEvent:
    """The CloudEvent a journal row holds."""
    return CloudEvent.model_validate(row.envelope)
