"""Creating the Pub/Sub bus's topics and subscriptions, idempotently, with the client's errors made ours."""

from __future__ import annotations

import structlog
from google.api_core import exceptions as api_exceptions
from google.cloud import pubsub_v1

from release.adapters.pubsub_wire import raise_pubsub_error

log = structlog.get_logger(__name__)


def create_topic(publisher: pubsub_v1.PublisherClient, path: str) -> None:
    """Create the topic at ``path`` unless it exists (or this identity may only publish to it)."""
    try:
        publisher.create_topic(name=path)
    except api_exceptions.AlreadyExists:
        pass
    except api_exceptions.PermissionDenied:
        # A publish-only identity may not create topics; deployment created them. A missing one makes the
        # publish itself fail loudly.
        log.info("pubsub.topic_create_denied", topic=path)
    except Exception as e:  # raise_pubsub_error re-raises anything it does not know
        raise_pubsub_error(e, f"creation of topic {path}")


def create_subscription(subscriber: pubsub_v1.SubscriberClient, subscription: pubsub_v1.types.Subscription) -> None:
    """Create ``subscription`` unless one of that name exists (an existing one is kept as it is, but for a push
    endpoint ``subscription`` names, which replaces the one it has)."""
    try:
        subscriber.create_subscription(request=subscription)
    except api_exceptions.AlreadyExists:
        if subscription.push_config.push_endpoint:
            try:
                subscriber.modify_push_config(request={"subscription": subscription.name,
                                                       "push_config": subscription.push_config})
            except Exception as e:  # raise_pubsub_error re-raises anything it does not know
                raise_pubsub_error(e, f"push config of subscription {subscription.name}")
    except api_exceptions.PermissionDenied:
        # Deployed roles hold subscriber on their own subscriptions, not the right to create any; setup.sh
        # created them. A missing one makes the pull itself fail loudly.
        log.info("pubsub.subscription_create_denied", subscription=subscription.name)
    except Exception as e:  # raise_pubsub_error re-raises anything it does not know
        raise_pubsub_error(e, f"creation of subscription {subscription.name}")
