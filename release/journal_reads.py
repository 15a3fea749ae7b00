"""Reading the event journal forward by sequence number: the paged events route and the live event stream.

The journal (``release.journal``) is the outbox every event is written to in its producer's transaction, so
``seq`` orders every event of every transport. A reader remembers the last ``seq`` it saw and asks for what
came after; nothing here changes a row.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlmodel import Session, col, func, select

from schemas.tables import EventRecord

#: Prediction batches are bulk data for the monitor, not something a person follows; readers skip them.
QUIET_TOPICS = frozenset({"prediction-logs"})


def after(session: Session, *, seq: int = 0, limit: int = 100, model: str | None = None,
          topics: Collection[str] | None = None, skip_quiet: bool = True) -> Sequence[EventRecord]:
    """Journalled events with a sequence number above ``seq``, oldest first."""
    query = select(EventRecord).where(col(EventRecord.seq) > seq)
    if model is not None:
        query = query.where(EventRecord.model == model)
    if topics is not None:
        query = query.where(col(EventRecord.topic).in_(sorted(topics)))
    elif skip_quiet:
        query = query.where(col(EventRecord.topic).not_in(sorted(QUIET_TOPICS)))
    return session.exec(query.order_by(col(EventRecord.seq)).limit(limit)).all()


def before(session: Session, *, seq: int | None = None, limit: int = 100, model: str | None = None,
           topics: Collection[str] | None = None) -> list[EventRecord]:
    """The newest events below ``seq`` (all when None), returned oldest first: a page going back in time."""
    query = select(EventRecord)
    if seq is not None:
        query = query.where(col(EventRecord.seq) < seq)
    if model is not None:
        query = query.where(EventRecord.model == model)
    if topics is not None:
        query = query.where(col(EventRecord.topic).in_(sorted(topics)))
    else:
        query = query.where(col(EventRecord.topic).not_in(sorted(QUIET_TOPICS)))
    rows = session.exec(query.order_by(col(EventRecord.seq).desc()).limit(limit)).all()
    return list(reversed(rows))


def last_seq(session: Session) -> int:
    """The highest sequence number in the journal (0 when empty): where a new live reader starts."""
    return int(session.exec(select(func.max(EventRecord.seq))).one() or 0)


def short_type(event_type: str) -> str:
    """``dev.modelrelease.alias.moved.v1`` -> ``alias.moved`` (what ``release events`` prints)."""
    return event_type.removeprefix("dev.modelrelease.").removesuffix(".v1")


def event_view(row: EventRecord) -> dict[str, Any]:
    """One journal row as readers see it: sequence, short type, topic, model, subject, time and data."""
    return {"seq": row.seq, "id": row.event_id, "type": short_type(row.type), "topic": row.topic,
            "model": row.model, "subject": row.subject, "time": row.created_at,
            "data": row.envelope.get("data", {})}
