"""Fixtures for the edge tests: one upstream pod stand-in and routers served over real HTTP on loopback.

The attacks here are about what crosses the socket (how much of a body is read, what reaches ``/metrics``), so
the router runs under uvicorn in a thread, as in production, never behind Starlette's in-process TestClient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from release.db import session_scope
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from tests.release.router_testkit import RecordingBus, Upstream, add_version, move_alias
from tests.security.edge_router import EdgeRouter
from tests.servers.in_thread import serve_in_thread


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """A pod stand-in that answers every prediction 200."""
    pod = Upstream("edge")
    with serve_in_thread(pod.app(), name="upstream edge", lifespan="off", timeout_s=10) as url:
        pod.url = url
        yield pod


@pytest.fixture
def serve_edge_router(sqlite_engine: Engine, upstream: Upstream) -> Iterator[Callable[..., EdgeRouter]]:
    """Start routers (``Router`` keywords as options) over ``digits`` v1 on ``upstream``; stop them after the test."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstream.url])
    move_alias(sqlite_engine, "PROD", "1")
    with contextlib.ExitStack() as servers:

        def serve(**options: Any) -> EdgeRouter:
            metrics = RouterMetrics(CollectorRegistry())
            bus = RecordingBus()
            logger = PredictionLogger(engine=sqlite_engine, bus=bus)  # never started: ``logged`` flushes it
            router = Router(table=RouteTable(engine=sqlite_engine), logger=logger, metrics=metrics, **options)
            url = servers.enter_context(serve_in_thread(build_router_app(router), name="router", lifespan="on"))
            return EdgeRouter(url=url, upstream=upstream, metrics=metrics, logger=logger, bus=bus)

        yield serve
