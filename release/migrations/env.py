"""Alembic environment: runs migrations on the connection ``release.db.migrate`` hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import schemas.tables  # noqa: F401

config = context.config
connection = config.attributes.get("connection")
target_metadata = SQLModel.metadata

if connection is None:
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()
