"""Helpers for the router tests: upstream stand-ins for pods, registry seeding, a fake clock, a recording bus.

The fixtures that serve these live in ``conftest.py``; what a test module imports by name lives here.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from handlers.http_errors import error_body, http_status, retry_after
from release import registry
from release.db import session_scope
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, build_router_app
from schemas.errors import Reason, TemporaryError
from schemas.events import CloudEvent, Topic
from schemas.predictions import PredictionRecord

MODEL = "digits"
ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


class FakeClock:
    """A monotonic clock that moves only when told to, or by ``tick`` seconds on every reading."""

    def __init__(self, *, start: float = 1_000.0, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick

    def __call__(self) -> float:
        """The current reading (then move on by ``tick``)."""
        reading = self.now
        self.now += self.tick
        return reading

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds


@dataclass
class Upstream:
    """A tiny OIP-shaped HTTP server on loopback: answers with a fixed status and says who it is."""

    name: str
    status: int = 200
    hits: int = 0
    request_ids: list[str] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        """The upstream's ASGI app."""

        async def infer(request: Request) -> Response:
            self.hits += 1
            self.request_ids.append(request.headers.get("x-request-id", ""))
            return self.answer()

        return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]),
                                 Route("/predictions/{model}", infer, methods=["POST"])])

    def answer(self) -> Response:
        """What a pod in this upstream's state answers."""
        if self.status == 503:  # what a draining pod says: refused before running anything
            return JSONResponse({"error": "draining", "reason": "not_ready", "served_by": self.name},
                                status_code=503)
        if self.status == 429:  # what a pod with a full queue says: the pod's own error body, status and header
            full = TemporaryError("queue full", reason=Reason.QUEUE_FULL, delay=3.0)
            return JSONResponse(error_body(full), status_code=http_status(full),
                                headers={"Retry-After": retry_after(full) or ""})
        if self.status != 200:
            return JSONResponse({"error": "boom", "served_by": self.name}, status_code=self.status)
        return JSONResponse({"served_by": self.name, "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.7, 0.2]}]})


def add_version(s: Session, version: str, endpoints: list[str] | None, policy: dict[str, Any] | None = None) -> None:
    """Register ``digits`` ``version``, served (status ready) by ``endpoints`` unless None."""
    view = registry.register_version(s, model=MODEL, version=version, digest=f"sha256:{version}",
                                     artifact_uri=f"file:///b/models/{MODEL}/{version}/", format="torchscript",
                                     manifest={}, policy=policy or {}).version
    if endpoints is not None:
        registry.record_deployment(s, version_id=view.id, backend="local", status="ready", endpoints=endpoints)


def move_alias(engine: Engine, alias: str, version: str) -> None:
    """Point ``alias`` of ``digits`` at ``version``."""
    with session_scope(engine) as s:
        registry.move_alias(s, model=MODEL, alias=alias, version=version, expected_revision=None, actor="test",
                            reason="test")


@dataclass
class Harness:
    """A router over a real metadata store, driven through Starlette's TestClient (lifespan included)."""

    client: TestClient
    router: Router
    metrics: RouterMetrics
    logger: PredictionLogger | None

    def infer(self, path: str = f"/v2/models/{MODEL}/infer", **headers: str) -> Any:
        """POST one digits row."""
        return self.client.post(path, json=ROW, headers=headers)

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample (0 when absent)."""
        return self.metrics.registry.get_sample_value(name, labels or None) or 0.0


def build_harness(engine: Engine, *, ttl_s: float = 0.5, seed: int = 7, logger: PredictionLogger | None = None,
                  metrics: RouterMetrics | None = None, clock: FakeClock | None = None,
                  timing_clock: FakeClock | None = None) -> Harness:
    """A router behind a started TestClient (the caller exits it): seeded rng, optional logger and fake clocks.

    ``clock`` drives the route table's TTL, ``timing_clock`` the router's Server-Timing and latency metrics.
    """
    metrics = metrics or RouterMetrics(CollectorRegistry())
    table = RouteTable(engine=engine, ttl_s=ttl_s, clock=clock or time.monotonic)
    router = Router(table=table, logger=logger, metrics=metrics, timeout_s=10, rng=random.Random(seed),
                    clock=timing_clock or time.perf_counter)
    client = TestClient(build_router_app(router))
    client.__enter__()
    return Harness(client=client, router=router, metrics=metrics, logger=logger)


class RecordingBus:
    """An ``EventBus`` that only records what is published (optionally holding each publish until released)."""

    def __init__(self, *, hold: threading.Event | None = None) -> None:
        self.events: list[CloudEvent] = []
        self.hold = hold
        self.entered = threading.Event()

    def publish(self, event: CloudEvent, *, topic: Topic, session: Session) -> None:
        """Record the event (after waiting for ``hold``, when given)."""
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(timeout=10)
        assert topic == Topic.PREDICTION_LOGS
        self.events.append(event)

    def records(self) -> list[dict[str, Any]]:
        """Every published prediction record."""
        return [r for e in self.events for r in e.data["records"]]


def record(i: int, model: str = MODEL) -> PredictionRecord:
    """A prediction record with id ``r{i}``."""
    now = datetime.now(UTC)
    return PredictionRecord(request_id=f"r{i}", model=model, version="1", received_at=now, completed_at=now,
                            latency_ms=1.0, inputs=[0.0], outputs=[1.0], predicted_class=0)
