"""The ``<topic>-dead-letter`` topics of the Pub/Sub bus: putting a delivery there once its attempts ran out,
looking at what failed without consuming it, and sending a subscription's dead letters back to their topic."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

import structlog
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message as PubSubMessage

from release.adapters.pubsub_wire import (
    DEAD_LETTER_ATTRIBUTES,
    DEAD_LETTER_SUFFIX,
    as_dead_letter,
    pubsub_errors,
    source_subscription,
)
from release.ports import DeadLetter
from schemas.errors import PermanentError

log = structlog.get_logger(__name__)

# A redrive moves at most this many pulls' worth (100 each) of dead letters in one call.
_REDRIVE_MAX_ROUNDS = 100


class DeadLetterTopics:
    """Reads and redrives the dead-letter subscriptions of one bus, through that bus's clients and names."""

    def __init__(self, *, subscriber: pubsub_v1.SubscriberClient, publisher: pubsub_v1.PublisherClient,
                 subscription_path: Callable[[str], str], topic_path: Callable[[str], str],
                 timeout_s: float) -> None:
        self._subscriber = subscriber
        self._publisher = publisher
        self._subscription_path = subscription_path
        self._topic_path = topic_path
        self._timeout_s = timeout_s

    def put(self, raw: PubSubMessage, *, topic: str, subscription: str, attempt: int, error: str,
            event_id: str) -> None:
        """Move a delivery that failed its last attempt to ``<topic>-dead-letter``, the error in its attributes.
        If that publish fails the delivery is nacked, so it stays in Pub/Sub and is tried again."""
        attributes: Mapping[str, str] = {**raw.attributes, "error": error[:1024],
                                         "dead-letter-subscription": subscription, "delivery-attempts": str(attempt)}
        log.warning("pubsub.dead_letter", subscription=subscription, event_id=event_id, attempt=attempt, error=error)
        try:
            self._publisher.publish(self._topic_path(f"{topic}{DEAD_LETTER_SUFFIX}"), raw.data,
                                    **attributes).result(timeout=self._timeout_s)
        except Exception as e:
            log.warning("pubsub.dead_letter_failed", event_id=event_id, error=str(e))
            raw.nack()
            return
        raw.ack()

    def peek(self, topics: Iterable[str], *, subscription: str | None, limit: int) -> list[DeadLetter]:
        """Dead letters of ``topics`` (of one subscription, or all), newest first; each is released at once."""
        found: list[DeadLetter] = []
        for topic in sorted(set(topics)):
            path = self._subscription_path(f"{topic}{DEAD_LETTER_SUFFIX}")
            try:
                received = self._pull_now(path, limit=limit)
            except PermanentError:
                continue  # no dead-letter subscription for this topic: nothing was ever dead-lettered there
            if received:
                with pubsub_errors("release peeked dead letters"):
                    self._subscriber.modify_ack_deadline(subscription=path, ack_ids=[m.ack_id for m in received],
                                                         ack_deadline_seconds=0)
            found += [letter for letter in map(as_dead_letter, received)
                      if subscription is None or letter.subscription == subscription]
        return sorted(found, key=lambda d: d.at or datetime.min.replace(tzinfo=UTC), reverse=True)[:limit]

    def redrive(self, *, topic: str, subscription: str) -> list[str]:
        """Publish ``subscription``'s dead letters to ``topic`` again, then drop them from the dead-letter topic.
        Returns the new message ids.

        Every subscription of the topic receives the copy; those that already applied the event skip it by its
        id, as they skip any redelivery.
        """
        dead_letter = self._subscription_path(f"{topic}{DEAD_LETTER_SUFFIX}")
        sent: list[str] = []
        for _ in range(_REDRIVE_MAX_ROUNDS):
            received = self._pull_now(dead_letter, limit=100)
            mine = [m for m in received if source_subscription(m.message.attributes) == subscription]
            others = [m.ack_id for m in received if m not in mine]
            for item in mine:
                attributes = {k: v for k, v in item.message.attributes.items() if k not in DEAD_LETTER_ATTRIBUTES}
                with pubsub_errors(f"redrive to {topic}"):
                    sent.append(self._publisher.publish(self._topic_path(topic), item.message.data,
                                                        **attributes).result(timeout=self._timeout_s))
            with pubsub_errors("settle dead letters"):
                if mine:
                    self._subscriber.acknowledge(subscription=dead_letter, ack_ids=[m.ack_id for m in mine])
                if others:
                    self._subscriber.modify_ack_deadline(subscription=dead_letter, ack_ids=others,
                                                         ack_deadline_seconds=0)
            if not mine:
                break
        return sent

    def _pull_now(self, path: str, *, limit: int) -> list[pubsub_v1.types.ReceivedMessage]:
        with pubsub_errors(f"pull {path}"):
            response = self._subscriber.pull(
                request={"subscription": path, "max_messages": limit, "return_immediately": True},
                timeout=self._timeout_s)
        return list(response.received_messages)
