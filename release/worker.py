"""Consumer loops: pull a subscription, call a handler per event, settle each message by the outcomes table.

Also the "until idle" driver used by ``release run --until-idle``: it keeps consuming until no subscription
has work left and no handler is busy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from release.outcomes import disposition
from release.ports import EventBus, Message
from schemas.events import CloudEvent

log = structlog.get_logger(__name__)

Handler = Callable[[CloudEvent], object]


@dataclass
class Consumer:
    """One subscription and the function that handles its events."""

    bus: EventBus
    subscription: str
    handler: Handler
    batch: int = 10

    def drain_once(self, *, wait_s: float = 0.0) -> int:
        """Pull one batch and handle it; returns how many messages were settled."""
        messages = self.bus.pull(self.subscription, max_messages=self.batch, wait_s=wait_s)
        for message in messages:
            self.settle(message)
        return len(messages)

    def settle(self, message: Message) -> None:
        """Handle one message and ack or nack it according to the outcomes table."""
        event = message.event
        structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
        try:
            self.handler(event)
        except Exception as exc:
            outcome = disposition(exc, attempt=message.attempt)
            if outcome.ack:
                log.warning("event.failed_permanently", error=str(exc), subscription=self.subscription)
                self.bus.ack(message)
            else:
                log.warning("event.retry", error=str(exc), attempt=message.attempt, delay_s=outcome.delay_s,
                            subscription=self.subscription, exc_info=not hasattr(exc, "reason"))
                self.bus.nack(message, error=f"{type(exc).__name__}: {exc}", delay_s=outcome.delay_s)
        else:
            self.bus.ack(message)
        finally:
            structlog.contextvars.unbind_contextvars("event_id", "event_type")

    def run(self, stop: threading.Event, *, wait_s: float = 0.5) -> None:
        """Consume until ``stop`` is set."""
        while not stop.is_set():
            self.bus.flush()
            self.drain_once(wait_s=wait_s)


def run_until_idle(consumers: list[Consumer], *, bus: EventBus, max_rounds: int = 100_000,
                   on_round: Callable[[], None] | None = None) -> int:
    """Consume every subscription until none has a backlog. Returns how many messages were handled."""
    handled = 0
    for _ in range(max_rounds):
        bus.flush()
        progress = 0
        for consumer in consumers:
            progress += consumer.drain_once(wait_s=0.05)
        handled += progress
        if on_round is not None:
            on_round()
        if progress == 0 and all(bus.backlog(c.subscription) == 0 for c in consumers):
            return handled
    raise RuntimeError(f"still busy after {max_rounds} rounds")
