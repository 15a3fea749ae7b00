"""Fixtures shared by every suite: metadata stores on SQLite and on a real PostgreSQL server, and the local
servers that speak Google's wire protocols.

Pub/Sub: our gRPC server in a thread of the test process, or the official emulator when ``PUBSUB_EMULATOR_HOST``
is set. Cloud Storage: fake-gcs-server, one process per test, objects in the test's tmp folder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from release.adapters.local_bucket import LocalFolderStore
from release.adapters.local_bus import LocalEventBus
from release.db import make_engine, migrate, session_factory
from release.intake import Intake
from tests.servers.gcs_server import GcsServer
from tests.servers.pubsub_server import PubSubServer

PG_URL = os.environ.get("RELEASE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_available() -> str | None:
    try:
        engine = make_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server the suite runs against; CI must have it, a laptop may skip."""
    problem = _postgres_available()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_URL}: {problem}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {problem}")
    return PG_URL


def pg_schema_engine(base_url: str) -> Generator[tuple[Engine, str], None, None]:
    """An engine on a fresh private schema of the PostgreSQL at ``base_url``, dropped when the generator closes."""
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = make_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    url = f"{base_url}{sep}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    try:
        yield engine, url
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    """A migrated, empty metadata store: a SQLite file, then a private schema on the real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'release.db'}"
        engine = make_engine(url)
        migrate(engine)
        yield engine, url
        engine.dispose()
    else:
        base = request.getfixturevalue("postgres_url")
        gen = pg_schema_engine(base)
        engine, url = next(gen)
        migrate(engine)
        yield engine, url
        gen.close()


@pytest.fixture
def engine(db: tuple[Engine, str]) -> Engine:
    """Just the engine of ``db``."""
    return db[0]


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite store, for tests that are about logic rather than the database."""
    engine = make_engine(f"sqlite:///{tmp_path / 'release.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pubsub_host() -> Iterator[str]:
    """``host:port`` of a Pub/Sub API: the official emulator when configured, else our server."""
    configured = os.environ.get("PUBSUB_EMULATOR_HOST")
    if configured:
        yield configured
        return
    server = PubSubServer()
    yield server.start()
    server.stop()


@pytest.fixture
def gcs_server(tmp_path: Path) -> Iterator[GcsServer]:
    """fake-gcs-server storing objects under the test's tmp folder."""
    server = GcsServer(root=tmp_path / "gcs")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    """An empty bucket folder (the local folder store's root)."""
    path = tmp_path / "bucket"
    path.mkdir()
    return path


@pytest.fixture
def intake(bucket: Path, engine: Engine) -> Iterator[Intake]:
    """Intake over the bucket folder, the metadata store and the local bus."""
    yield Intake(store=LocalFolderStore(root=bucket), bus=LocalEventBus(session_factory=session_factory(engine)),
                 engine=engine)
