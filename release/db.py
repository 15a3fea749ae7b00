"""The metadata store's engine and schema: SQLite or PostgreSQL, chosen by URL, migrated by Alembic.

Callers own transactions: ``with session_scope(engine) as session`` commits on success, rolls back on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

import schemas.tables  # noqa: F401  (registers every table on SQLModel.metadata)
from schemas.errors import TemporaryError

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing;
    # foreign keys are off by default in SQLite.
    # synchronous=NORMAL in WAL mode: a commit appends to the WAL without fsync; the WAL is synced at checkpoints.
    # The trade-off we accept: a commit survives the process crashing (the WAL is in the OS page cache), but an OS
    # crash or power loss can roll back the last transactions since the last checkpoint; the file stays consistent
    # either way. SQLite serves the single-writer local control plane, where lost writes are re-derived (intake
    # re-registers from the bucket, the level-triggered controller re-takes its step; a person's promote or
    # rollback may need repeating), and this takes the fsync (milliseconds) out of every registration and alias
    # move. Deployments that need every commit durable use PostgreSQL.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN so read-then-write transactions (CAS, leases) never deadlock on upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def normalise_url(url: str) -> str:
    """Map ``postgresql://`` to the psycopg 3 driver; other URLs pass through."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


_ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    "sqlite": {"connect_args": {"check_same_thread": False, "timeout": 30, "isolation_level": None}},
    # No pool_pre_ping: it costs a round trip per transaction. A connection the server dropped fails its first
    # statement instead; SQLAlchemy then invalidates the whole pool and session_scope turns the error into a
    # TemporaryError, so that one call is redelivered and later ones get fresh connections. Recycling bounds how
    # long an idle pooled connection can sit behind a server or proxy timeout.
    "postgresql": {"pool_size": 5, "max_overflow": 10, "pool_recycle": 1800},
}


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings its dialect needs; adapters are picked from a table, not a chain."""
    url = normalise_url(url)
    dialect = sa.make_url(url).get_backend_name()
    if dialect not in _ENGINE_OPTIONS:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")
    if dialect == "sqlite":
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **_ENGINE_OPTIONS[dialect])
    if dialect == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration. Safe to run from several processes at once."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # The connection is handed over below; the URL is only informative (and '%' would break configparser).
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string().replace("%", "%%"))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Two processes starting together must not both create the tables.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(740215)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit when the block ends, roll back when it raises."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
        for callback in session.info.pop("after_commit", []):
            callback()
    except OperationalError as exc:
        session.rollback()
        raise TemporaryError(f"metadata store unavailable: {exc.orig}", delay=2.0) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def session_factory(engine: Engine) -> Callable[[], Session]:
    """A callable giving new sessions on ``engine`` (for adapters that open their own transactions)."""
    return lambda: Session(engine, expire_on_commit=False)
