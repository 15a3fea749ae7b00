"""Each port's fake and its real adapters, built the same way, so one test body runs on all of them.

Buses: the in-memory fake, the local bus on SQLite and on PostgreSQL, and the Pub/Sub bus against a server
speaking Pub/Sub's gRPC API. Stores: the in-memory fake, a local folder, and Cloud Storage (fake-gcs-server).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from sqlalchemy.engine import Engine
from sqlmodel import Session

from release import db
from release.adapters.gcs_store import GcsArtifactStore
from release.adapters.local_bucket import LocalFolderStore
from release.adapters.local_bus import LocalEventBus
from release.adapters.pubsub_bus import PubSubEventBus
from release.ports import ArtifactStore, EventBus, Message
from release.testing import MemoryBus, MemoryStore
from tests.servers.gcs_server import GcsServer


@dataclass
class BusUnderTest:
    """A bus, the sessions its publishers write in, and a pull that waits for an asynchronous transport."""

    bus: EventBus
    sessions: Callable[[], Session]
    delays: bool = True
    """Whether the transport can hold a publish back until ``not_before`` (Pub/Sub cannot)."""

    def pull_until(self, subscription: str, *, count: int, timeout_s: float = 10.0,
                   ack: bool = False) -> list[Message]:
        """Pull until ``count`` messages came or the time is up, acking each when told to (Pub/Sub holds back
        the next event of an ordering key until the one before it is acked)."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            self.bus.flush()
            for message in self.bus.pull(subscription, max_messages=count - len(got), wait_s=0.2):
                got.append(message)
                if ack:
                    self.bus.ack(message)
        return got


@pytest.fixture(params=["memory", "local-sqlite", "local-postgres", "pubsub"])
def bus_under_test(request: pytest.FixtureRequest, sqlite_engine: Engine) -> Iterator[BusUnderTest]:
    """The port's fake and each real adapter in turn."""
    engine = sqlite_engine
    if request.param == "local-postgres":
        engine = request.getfixturevalue("engine_on_postgres")
    sessions = db.session_factory(engine)
    bus: EventBus
    if request.param == "memory":
        bus = MemoryBus()
    elif request.param == "pubsub":
        bus = PubSubEventBus(session_factory=sessions, project="contract-project",
                             emulator_host=request.getfixturevalue("pubsub_host"),
                             topic_prefix=f"c{uuid.uuid4().hex[:10]}-")
    else:
        bus = LocalEventBus(session_factory=sessions)
    yield BusUnderTest(bus=bus, sessions=sessions, delays=request.param != "pubsub")
    bus.close()


@pytest.fixture
def engine_on_postgres(postgres_url: str) -> Iterator[Engine]:
    """A migrated private schema on the real PostgreSQL."""
    from tests.conftest import pg_schema_engine

    schemas = pg_schema_engine(postgres_url)
    engine, _url = next(schemas)
    db.migrate(engine)
    yield engine
    schemas.close()


@pytest.fixture(params=["memory", "folder", "gcs"])
def store_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """The port's fake and each real adapter in turn, each on an empty bucket."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "folder":
        return LocalFolderStore(root=tmp_path / "bucket")
    server: GcsServer = request.getfixturevalue("gcs_server")
    client = storage.Client(project="contract-project", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": server.url})
    client.create_bucket("contract")
    return GcsArtifactStore(uri="gs://contract/release", emulator_host=server.url, chunk_size=1024)
