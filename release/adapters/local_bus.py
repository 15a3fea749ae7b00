"""The embedded event bus: durable queue tables in the metadata DB.

Publishing writes the journal row and one delivery per subscription of the topic in the caller's transaction
(transactional outbox with fan-out at publish time, so no event can slip between a cursor and a late commit).
Consumers lease deliveries with a visibility deadline; an unacked lease expires and the event is delivered
again (at-least-once); after ``max_attempts`` leases the delivery is dead-lettered with its last error kept.
PostgreSQL consumers lease with ``FOR UPDATE SKIP LOCKED``; SQLite takes the write lock at BEGIN.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from release import journal
from release.ports import DeadLetter, Message, SubscriptionSpec
from schemas.events import CloudEvent, Topic
from schemas.tables import Delivery, EventRecord, Subscription, utcnow

_POLL_S = 0.05
_HOST = socket.gethostname()


def _owner_is_dead(token: str | None) -> bool:
    """True when a lease was taken by a process on this host that no longer exists.

    Lets a restarted consumer take back at once what a killed one held, instead of waiting out the deadline.
    Leases taken on other hosts are left to their deadline.
    """
    if not token:
        return False
    host, _, rest = token.partition("|")
    pid_text = rest.partition("|")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LocalEventBus:
    """``EventBus`` over the metadata store: works on SQLite and PostgreSQL, from any number of processes."""

    def __init__(self, *, session_factory: Callable[[], Session]) -> None:
        self._sessions = session_factory
        self._specs: dict[str, SubscriptionSpec] = {}
        self._wakeup = threading.Condition()

    # -------------------------------------------------------------------------------- publishing
    def publish(self, event: CloudEvent, *, topic: Topic, session: Session,
                not_before: datetime | None = None) -> None:
        """Journal the event and fan it out to the topic's subscriptions, inside the caller's transaction.

        With ``not_before`` the deliveries become available only then (a due reconcile): nothing polls for it.
        """
        before = session.exec(select(EventRecord.seq).where(EventRecord.event_id == event.id)).first()
        if before is not None:
            return
        row = journal.append(session, event, topic=topic)
        names = session.exec(select(Subscription.name).where(Subscription.topic == str(topic))).all()
        now = utcnow()
        available = max(now, not_before) if not_before is not None else now
        for name in names:
            assert row.seq is not None
            session.add(Delivery(subscription=name, event_seq=row.seq, available_at=available))
        # Wake consumers in this process once the caller commits; other processes poll.
        session.info.setdefault("after_commit", []).append(self._notify)

    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def flush(self) -> int:
        """Nothing to relay: deliveries were created in the publishing transaction."""
        return 0

    # -------------------------------------------------------------------------------- subscriptions
    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Create or update the subscription row."""
        self._specs[spec.name] = spec
        with self._sessions() as session:
            row = session.get(Subscription, spec.name)
            if row is None:
                row = Subscription(name=spec.name, topic=str(spec.topic))
            row.topic = str(spec.topic)
            row.ack_deadline_s = spec.ack_deadline_s
            row.max_attempts = spec.max_attempts
            session.add(row)
            session.commit()

    def _spec(self, session: Session, name: str) -> Subscription:
        row = session.get(Subscription, name)
        if row is None:
            raise KeyError(f"subscription {name!r} does not exist; call ensure_subscription first")
        return row

    # -------------------------------------------------------------------------------- consuming
    def pull(self, subscription: str, *, max_messages: int = 10, wait_s: float = 0.0) -> list[Message]:
        """Lease ready deliveries; wait up to ``wait_s`` for one to become ready."""
        deadline = time.monotonic() + wait_s
        while True:
            messages = self._lease(subscription, max_messages)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            with self._wakeup:
                self._wakeup.wait(min(_POLL_S, remaining))

    def _lease(self, subscription: str, max_messages: int) -> list[Message]:
        with self._sessions() as session:
            spec = self._spec(session, subscription)
            now = utcnow()
            ready = (select(Delivery).where(Delivery.subscription == subscription)
                     .where(Delivery.status == "pending").where(col(Delivery.available_at) <= now)
                     .order_by(col(Delivery.event_seq)).limit(max_messages))
            leased = (select(Delivery).where(Delivery.subscription == subscription)
                      .where(Delivery.status == "pending").where(col(Delivery.available_at) > now)
                      .where(col(Delivery.lease_token).is_not(None)).order_by(col(Delivery.event_seq))
                      .limit(200))
            if session.get_bind().dialect.name == "postgresql":
                ready = ready.with_for_update(skip_locked=True)
                leased = leased.with_for_update(skip_locked=True)
            rows = list(session.exec(ready).all())
            if len(rows) < max_messages:
                orphans = [r for r in session.exec(leased).all() if _owner_is_dead(r.lease_token)]
                rows.extend(orphans[: max_messages - len(rows)])
            out: list[Message] = []
            for row in rows:
                if row.attempts >= spec.max_attempts:
                    # Leased max_attempts times and never acked: the consumer keeps dying on it.
                    row.status = "dead"
                    row.done_at = now
                    row.last_error = row.last_error or "ack deadline expired on every attempt"
                    session.add(row)
                    continue
                token = f"{_HOST}|{os.getpid()}|{secrets.token_hex(8)}"
                row.attempts += 1
                row.lease_token = token
                row.available_at = now + timedelta(seconds=spec.ack_deadline_s)
                session.add(row)
                event_row = session.get(EventRecord, row.event_seq)
                assert event_row is not None and row.id is not None
                out.append(Message(event=journal.to_event(event_row), subscription=subscription,
                                   attempt=row.attempts, handle=f"{row.id}:{token}"))
            session.commit()
            return out

    def ack(self, message: Message) -> None:
        """Mark the delivery done, if this lease still holds it (a lease that expired belongs to someone else)."""
        delivery_id, token = _parse(message.handle)
        with self._sessions() as session:
            session.execute(update(Delivery)
                            .where(col(Delivery.id) == delivery_id, col(Delivery.lease_token) == token)
                            .values(status="acked", done_at=utcnow(), lease_token=None))
            session.commit()

    def nack(self, message: Message, *, error: str, delay_s: float = 0.0) -> None:
        """Make the delivery ready again after ``delay_s``, or dead-letter it when attempts are used up."""
        delivery_id, token = _parse(message.handle)
        with self._sessions() as session:
            row = session.get(Delivery, delivery_id)
            if row is None or row.lease_token != token:
                return
            spec = self._spec(session, row.subscription)
            now = utcnow()
            row.last_error = error[:4000]
            row.lease_token = None
            if row.attempts >= spec.max_attempts:
                row.status = "dead"
                row.done_at = now
            else:
                row.available_at = now + timedelta(seconds=max(0.0, delay_s))
            session.add(row)
            session.commit()

    def backlog(self, subscription: str) -> int:
        """Deliveries pending or leased (not acked, not dead)."""
        with self._sessions() as session:
            count = session.exec(select(func.count()).select_from(Delivery)
                                 .where(Delivery.subscription == subscription)
                                 .where(Delivery.status == "pending")).one()
            return int(count)

    def setup(self, topics: Iterable[Topic], subscriptions: Iterable[SubscriptionSpec]) -> None:
        """Topics are implicit in the queue tables: only the subscriptions are created."""
        for spec in subscriptions:
            self.ensure_subscription(spec)

    def dead_letters(self, subscription: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered deliveries with their event, newest first."""
        with self._sessions() as session:
            query = (select(Delivery, EventRecord.event_id, EventRecord.type)
                     .join(EventRecord, col(EventRecord.seq) == col(Delivery.event_seq))
                     .where(Delivery.status == "dead"))
            if subscription is not None:
                query = query.where(Delivery.subscription == subscription)
            rows = session.exec(query.order_by(col(Delivery.id).desc()).limit(limit)).all()
            return [DeadLetter(subscription=d.subscription, event_id=event_id, event_type=event_type,
                               attempts=d.attempts, error=d.last_error or "", at=d.done_at)
                    for d, event_id, event_type in rows]

    def redrive(self, subscription: str) -> int:
        """Put a subscription's dead letters back in its queue with fresh attempts."""
        with self._sessions() as session:
            result = session.execute(update(Delivery)
                                     .where(col(Delivery.subscription) == subscription,
                                            col(Delivery.status) == "dead")
                                     .values(status="pending", attempts=0, available_at=utcnow(), done_at=None))
            session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Nothing held between calls."""


def _parse(handle: str) -> tuple[int, str]:
    delivery_id, _, token = handle.partition(":")
    return int(delivery_id), token
