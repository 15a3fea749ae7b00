"""Fixtures for the Google Cloud adapters: real clients against the real local servers of ``tests/conftest.py``.

Every test gets its own topic prefix, so tests never see each other's messages on a shared emulator.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from sqlalchemy.engine import Engine
from sqlmodel import Session

from release import db
from release.adapters.gcs_store import GcsArtifactStore
from release.adapters.pubsub_bus import PubSubEventBus
from release.ports import Message
from tests.servers.gcs_server import GcsServer

PROJECT = "test-project"
BUCKET = "artifacts"


@pytest.fixture
def session_factory(sqlite_engine: Engine) -> Callable[[], Session]:
    """New sessions on a migrated SQLite journal in the test's tmp folder."""
    return db.session_factory(sqlite_engine)


@pytest.fixture
def prefix() -> str:
    """A topic/subscription name prefix private to this test."""
    return f"t{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def make_bus(pubsub_host: str, session_factory: Callable[[], Session],
             prefix: str) -> Iterator[Callable[..., PubSubEventBus]]:
    """Builds buses sharing this test's prefix and journal (two buses = two processes); closes them after."""
    buses: list[PubSubEventBus] = []

    def make(**options: Any) -> PubSubEventBus:
        bus = PubSubEventBus(session_factory=session_factory, project=PROJECT, emulator_host=pubsub_host,
                             topic_prefix=prefix, **options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


@pytest.fixture
def bus(make_bus: Callable[..., PubSubEventBus]) -> PubSubEventBus:
    """A Pub/Sub bus with default options."""
    return make_bus()


@pytest.fixture
def raw_publisher(pubsub_host: str) -> Iterator[pubsub_v1.PublisherClient]:
    """The plain Google publisher client, for looking at or forging what is on the wire."""
    client = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub_host)))
    yield client
    client.stop()


@pytest.fixture
def raw_subscriber(pubsub_host: str) -> Iterator[pubsub_v1.SubscriberClient]:
    """The plain Google subscriber client, for unary pulls and admin calls."""
    client = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(pubsub_host)))
    yield client
    client.close()


def pull_until(bus: PubSubEventBus, subscription: str, *, count: int, timeout_s: float = 10.0,
               ack: bool = True) -> list[Message]:
    """Pull until ``count`` messages came (acking each unless told not to) or the time is up."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        for message in bus.pull(subscription, max_messages=count - len(got), wait_s=0.2):
            got.append(message)
            if ack:
                bus.ack(message)
    return got


def raw_pull(subscriber: pubsub_v1.SubscriberClient, subscription: str, *, count: int,
             timeout_s: float = 10.0) -> list[pubsub_v1.types.ReceivedMessage]:
    """Unary-pull and ack ``count`` messages from a subscription (or fewer when the time is up)."""
    got: list[pubsub_v1.types.ReceivedMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": count - len(got)},
                                   timeout=5)
        if response.received_messages:
            subscriber.acknowledge(request={"subscription": subscription,
                                            "ack_ids": [m.ack_id for m in response.received_messages]})
            got.extend(response.received_messages)
    return got


@pytest.fixture
def gcs_client(gcs_server: GcsServer) -> storage.Client:
    """The plain storage client on the emulator, with the test bucket created."""
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_server.url})
    client.create_bucket(BUCKET)
    return client


@pytest.fixture
def store(gcs_server: GcsServer, gcs_client: storage.Client) -> GcsArtifactStore:
    """The adapter on ``gs://artifacts/release``, with small chunks so reads take several requests."""
    return GcsArtifactStore(uri=f"gs://{BUCKET}/release", emulator_host=gcs_server.url, chunk_size=1024)
