"""The router: alias resolution, canary splits, request ids and headers, error statuses, retries, prediction logs.

Tiny Starlette upstreams (real HTTP on loopback) stand in for pods where the behaviour is the router's own; one
real pod process (``python -m handlers.server`` with a TorchScript digits MLP) serves where a real answer matters.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from release import registry
from release.db import session_scope
from release.router import PredictionLogger, Router, RouterMetrics, RouteTable, Target, build_router_app
from schemas.events import CloudEvent, Topic
from schemas.predictions import PredictionRecord
from tests.artifacts import DigitsMLP, torchscript_bytes, write_artifact
from tests.handlers.pod_testkit import Pod, free_port
from tests.servers.in_thread import serve_in_thread

MODEL = "digits"
ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


# ---------------------------------------------------------------------------------------------- upstreams
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
            if self.status == 503:  # what a draining pod says: refused before running anything
                return JSONResponse({"error": "draining", "reason": "not_ready", "served_by": self.name},
                                    status_code=503)
            if self.status != 200:
                return JSONResponse({"error": "boom", "served_by": self.name}, status_code=self.status)
            return JSONResponse({"served_by": self.name, "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.7, 0.2]}]})

        return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]),
                                 Route("/predictions/{model}", infer, methods=["POST"])])


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    """Upstreams for the module: ``a`` and ``b`` answer 200, ``broken`` 500, ``draining`` 503 not_ready."""
    ups = {name: Upstream(name, status)
           for name, status in (("a", 200), ("b", 200), ("broken", 500), ("draining", 503))}
    with contextlib.ExitStack() as servers:
        for upstream in ups.values():
            upstream.url = servers.enter_context(
                serve_in_thread(upstream.app(), name=f"upstream {upstream.name}", lifespan="off", timeout_s=10))
        yield ups


@pytest.fixture(scope="module")
def real_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """One real pod process serving a TorchScript digits MLP as ``digits`` version 1."""
    bucket = tmp_path_factory.mktemp("bucket")
    torch_model = DigitsMLP()
    write_artifact(bucket, MODEL, "1", {"model.pt": torchscript_bytes(torch_model)})
    pod = Pod(bucket / "models" / MODEL / "1", log_dir=tmp_path_factory.mktemp("pod-logs"))
    try:
        yield pod.wait_ready(timeout_s=90)
    finally:
        pod.stop()


# ---------------------------------------------------------------------------------------------- registry
def _version(s: Session, version: str, endpoints: list[str] | None, policy: dict[str, Any] | None = None) -> None:
    view = registry.register_version(s, model=MODEL, version=version, digest=f"sha256:{version}",
                                     artifact_uri=f"file:///b/models/{MODEL}/{version}/", format="torchscript",
                                     manifest={}, policy=policy or {}).version
    if endpoints is not None:
        registry.record_deployment(s, version_id=view.id, backend="local", status="ready", endpoints=endpoints)


def _alias(engine: Engine, alias: str, version: str) -> None:
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


@pytest.fixture
def harness(sqlite_engine: Engine) -> Iterator[Callable[..., Harness]]:
    """Build a router (seeded rng, optional prediction logger) and serve it in-process."""
    clients: list[TestClient] = []

    def build(*, ttl_s: float = 0.5, seed: int = 7, logger: PredictionLogger | None = None,
              metrics: RouterMetrics | None = None) -> Harness:
        metrics = metrics or RouterMetrics(CollectorRegistry())
        router = Router(table=RouteTable(engine=sqlite_engine, ttl_s=ttl_s), logger=logger, metrics=metrics,
                        timeout_s=10, rng=random.Random(seed))
        client = TestClient(build_router_app(router))
        client.__enter__()
        clients.append(client)
        return Harness(client=client, router=router, metrics=metrics, logger=logger)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


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


def _record(i: int, model: str = MODEL) -> PredictionRecord:
    now = datetime.now(UTC)
    return PredictionRecord(request_id=f"r{i}", model=model, version="1", received_at=now, completed_at=now,
                            latency_ms=1.0, inputs=[0.0], outputs=[1.0], predicted_class=0)


# ---------------------------------------------------------------------------------------------- resolution
def test_prod_version_and_other_alias_resolve_to_their_pods(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                           harness: Callable[..., Harness]) -> None:
    """PROD, an explicit version and another alias (STG) each reach the pods of the version they name."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url])
        _version(s, "2", [upstreams["b"].url])
    _alias(sqlite_engine, "PROD", "1")
    _alias(sqlite_engine, "STG", "2")
    h = harness()
    cases = {f"/v2/models/{MODEL}/infer": ("1", "a"), f"/v2/models/{MODEL}/versions/1/infer": ("1", "a"),
             f"/v2/models/{MODEL}/versions/2/infer": ("2", "b"), f"/v2/models/{MODEL}/versions/STG/infer": ("2", "b"),
             f"/predict/{MODEL}/STG": ("2", "b"), f"/predict/{MODEL}": ("1", "a"),
             f"/predictions/{MODEL}/2": ("2", "b"), f"/predictions/{MODEL}": ("1", "a")}
    for path, (version, upstream) in cases.items():
        response = h.infer(path)
        assert response.status_code == 200, path
        assert (response.headers["x-model-version"], response.json()["served_by"]) == (version, upstream), path


def test_alias_move_is_seen_after_invalidate_or_within_the_ttl(sqlite_engine: Engine,
                                                               upstreams: dict[str, Upstream],
                                                               harness: Callable[..., Harness]) -> None:
    """A cached route is served until invalidated or until the TTL passes, then the moved alias wins."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url])
        _version(s, "2", [upstreams["b"].url])
    _alias(sqlite_engine, "PROD", "1")
    h = harness(ttl_s=0.3)
    assert h.infer().headers["x-model-version"] == "1"
    _alias(sqlite_engine, "PROD", "2")
    assert h.infer().headers["x-model-version"] == "1"  # still cached: bounded staleness, not zero
    h.router.table.invalidate(MODEL)
    assert h.infer().headers["x-model-version"] == "2"
    _alias(sqlite_engine, "PROD", "1")
    time.sleep(0.35)  # the TTL itself is what is under test
    assert h.infer().headers["x-model-version"] == "1"


# ---------------------------------------------------------------------------------------------- canary
def test_canary_weights_split_picks_statistically() -> None:
    """Target.pick sends the canary its weight in percent of picks (seeded, within 4 sigma)."""
    target = Target(model=MODEL, version="1", endpoints=("http://a",), canaries=(("2", ("http://b",), 30),))
    rng = random.Random(1)
    n = 10_000
    canary = sum(target.pick(rng)[0] == "2" for _ in range(n))
    assert abs(canary - 0.3 * n) < 4 * (n * 0.3 * 0.7) ** 0.5


def test_canary_without_pods_gets_no_traffic() -> None:
    """A canary route whose version has no ready pods is skipped: PROD takes its share."""
    target = Target(model=MODEL, version="1", endpoints=("http://a",), canaries=(("2", (), 100),))
    rng = random.Random(2)
    assert {target.pick(rng)[0] for _ in range(100)} == {"1"}


def test_router_honours_canary_route_weight(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                            harness: Callable[..., Harness]) -> None:
    """With a 25% route weight on version 2, about a quarter of PROD requests are answered by its pods."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url])
        _version(s, "2", [upstreams["b"].url])
        registry.set_route_weight(s, model=MODEL, version="2", weight=25)
    _alias(sqlite_engine, "PROD", "1")
    h = harness(seed=11)
    n = 200
    answers = [h.infer() for _ in range(n)]
    assert all(r.status_code == 200 for r in answers)
    assert all(r.headers["x-model-version"] == {"a": "1", "b": "2"}[r.json()["served_by"]] for r in answers)
    canary = sum(r.headers["x-model-version"] == "2" for r in answers)
    assert abs(canary - 0.25 * n) < 4 * (n * 0.25 * 0.75) ** 0.5


# ---------------------------------------------------------------------------------------------- headers
def test_request_id_generated_or_taken_and_group_id_echoed(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                            harness: Callable[..., Harness]) -> None:
    """X-Request-ID is generated when absent, kept when given, forwarded to the pod; the group id is echoed."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    generated = h.infer()
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert "x-group-request-id" not in generated.headers
    given = h.infer(**{"X-Request-ID": "req-42", "X-Group-Request-ID": "grp-7"})
    assert given.headers["x-request-id"] == "req-42"
    assert given.headers["x-group-request-id"] == "grp-7"
    assert upstreams["a"].request_ids[-2:] == [generated.headers["x-request-id"], "req-42"]


def test_model_version_and_server_timing_headers_from_a_real_pod(sqlite_engine: Engine, real_pod: Pod,
                                                                 harness: Callable[..., Harness]) -> None:
    """A real pod's answer comes back with X-Model-Version and a Server-Timing of upstream and total time."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [real_pod.url])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    rows = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": rows.ravel().tolist()}]}
    response = h.client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200
    assert response.headers["x-model-version"] == "1" and response.headers["x-model-name"] == MODEL
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
    assert set(timing) == {"upstream", "total"}
    assert 0 < float(timing["upstream"]) <= float(timing["total"])
    output = response.json()["outputs"][0]
    assert output["shape"] == [3, 10]
    assert np.allclose(np.asarray(output["data"]).reshape(3, 10).sum(axis=1), 1.0, atol=1e-4)


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_model_or_version_is_404_with_reason(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                     harness: Callable[..., Harness]) -> None:
    """An unknown model or version answers 404 with the reason code, a hint and the request id."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    model = h.infer("/v2/models/nope/infer", **{"X-Request-ID": "r-404"})
    assert model.status_code == 404 and model.json()["reason"] == "model_not_found"
    assert "nope" in model.json()["error"]
    assert model.headers["x-request-id"] == "r-404"
    version = h.infer(f"/v2/models/{MODEL}/versions/9/infer")
    assert version.status_code == 404 and version.json()["reason"] == "version_not_found"
    assert "9" in version.json()["error"]
    assert h.sample("router_requests_total", model="nope", version="-", code="404") == 1


def test_version_without_ready_pods_is_503(sqlite_engine: Engine, harness: Callable[..., Harness]) -> None:
    """A version that exists but has no ready deployment answers 503 not_ready, not 404."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", None)
        _version(s, "2", ["http://127.0.0.1:9"])
        view = registry.get_version(s, MODEL, "2")
        registry.record_deployment(s, version_id=view.id, backend="local", status="failed", endpoints=[])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    for path in (f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/2/infer"):
        response = h.infer(path)
        assert response.status_code == 503, path
        assert response.json()["reason"] == "not_ready"


# ---------------------------------------------------------------------------------------------- retries
def test_connect_error_is_retried_on_another_pod(sqlite_engine: Engine, real_pod: Pod,
                                                 harness: Callable[..., Harness]) -> None:
    """With one dead endpoint and one live pod every request succeeds; each dead hit counts one retry."""
    dead = f"http://127.0.0.1:{free_port()}"
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [dead, real_pod.url])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    responses = [h.infer() for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.headers["x-model-version"] == "1" for r in responses)
    # Round robin starts on the dead endpoint and alternates: requests 1 and 3 were retried.
    assert h.sample("router_upstream_retries_total") == 2


def test_upstream_500_is_not_retried(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                     harness: Callable[..., Harness]) -> None:
    """A pod that answered 500 may have run the request: the router passes the 500 on and tries nobody else."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["broken"].url, upstreams["a"].url])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    before_a, before_broken = upstreams["a"].hits, upstreams["broken"].hits
    response = h.infer()
    assert response.status_code == 500 and response.json()["served_by"] == "broken"
    assert (upstreams["a"].hits, upstreams["broken"].hits) == (before_a, before_broken + 1)
    assert h.sample("router_upstream_retries_total") == 0
    assert h.sample("router_requests_total", model=MODEL, version="1", code="500") == 1


def test_draining_pod_refusal_is_retried_on_another_pod(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                        harness: Callable[..., Harness]) -> None:
    """A 503 not_ready refusal (a draining pod ran nothing) is retried on the version's next pod."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["draining"].url, upstreams["a"].url])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    response = h.infer()
    assert response.status_code == 200 and response.json()["served_by"] == "a"
    assert h.sample("router_upstream_retries_total") == 1


def test_stale_route_to_retired_pods_resolves_afresh(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                     harness: Callable[..., Harness]) -> None:
    """When every pod of a cached route refuses (retired after a rollback) the router re-resolves at once."""
    dead = f"http://127.0.0.1:{free_port()}"
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url])
        _version(s, "2", [dead])
    _alias(sqlite_engine, "PROD", "2")
    h = harness(ttl_s=60)
    assert h.router.table.lookup(MODEL, "PROD").version == "2"  # cached for a minute: pods already gone
    _alias(sqlite_engine, "PROD", "1")
    response = h.infer()
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    assert h.infer().headers["x-model-version"] == "1"


def test_every_pod_unreachable_is_503(sqlite_engine: Engine, harness: Callable[..., Harness]) -> None:
    """When no pod of the version accepts a connection the answer is 503 unavailable, with the request id."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    _alias(sqlite_engine, "PROD", "1")
    h = harness()
    response = h.infer(**{"X-Request-ID": "r-dead"})
    assert response.status_code == 503 and response.json()["reason"] == "unavailable"
    assert response.headers["x-request-id"] == "r-dead"


# ---------------------------------------------------------------------------------------------- logging
def test_predictions_are_sampled_at_the_policy_rate(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                    harness: Callable[..., Harness]) -> None:
    """With drift.sample_rate 0.25 about a quarter of successful predictions are logged, with their ids."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url], policy={"drift": {"sample_rate": 0.25}})
    _alias(sqlite_engine, "PROD", "1")
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus)
    h = harness(seed=3, logger=logger)
    n = 200
    ids = {h.infer().headers["x-request-id"] for _ in range(n)}
    logger.flush()
    records = bus.records()
    assert abs(len(records) - 0.25 * n) < 4 * (n * 0.25 * 0.75) ** 0.5
    assert {r["request_id"] for r in records} <= ids
    assert all(r["model"] == MODEL and r["version"] == "1" and r["predicted_class"] == 1 for r in records)


def test_failed_predictions_are_not_logged(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                           harness: Callable[..., Harness]) -> None:
    """An upstream error is passed on but never logged as a prediction."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["broken"].url])
    _alias(sqlite_engine, "PROD", "1")
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus)
    h = harness(logger=logger)
    assert h.infer().status_code == 500
    logger.flush()
    assert bus.records() == []


def test_logger_publishes_in_batches_per_model(sqlite_engine: Engine) -> None:
    """1,200 records of two models with batch 500 become one event per model and chunk, nothing lost."""
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus, batch=500)
    for i in range(1200):
        logger.offer(_record(i, model="a" if i % 3 else "b"))
    logger.flush()
    sizes = [len(e.data["records"]) for e in bus.events]
    assert sum(sizes) == 1200 and logger.published == 1200
    assert max(sizes) <= 500 and len(bus.events) == 6  # 3 chunks, each split into models a and b
    assert all(len({r["model"] for r in e.data["records"]}) == 1 for e in bus.events)


def test_logger_never_blocks_and_counts_drops_when_full(sqlite_engine: Engine) -> None:
    """With the publisher stuck, offers stay instant; past capacity records are dropped and counted."""
    metrics = RouterMetrics(CollectorRegistry())
    hold = threading.Event()
    bus = RecordingBus(hold=hold)
    logger = PredictionLogger(engine=sqlite_engine, bus=bus, capacity=50, batch=10, interval_s=0.01,
                              dropped=metrics.dropped)
    logger.start()
    try:
        logger.offer(_record(0))
        assert bus.entered.wait(timeout=5)  # the background publisher is now blocked inside publish
        started = time.perf_counter()
        for i in range(1, 1001):
            logger.offer(_record(i))
        elapsed = time.perf_counter() - started
    finally:
        hold.set()
        logger.close()
    assert elapsed < 0.5, f"1,000 offers took {elapsed:.3f}s"
    dropped = metrics.registry.get_sample_value("router_prediction_logs_dropped_total") or 0
    assert dropped == 1001 - 50 - 1  # one record was taken by the stuck publish, 50 fit the buffer
    assert logger.published == 51 and len(bus.records()) == 51


def test_full_log_buffer_never_fails_a_prediction(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                  harness: Callable[..., Harness]) -> None:
    """With a tiny, never-flushed buffer predictions still succeed and the drops show in /metrics."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [upstreams["a"].url])
    _alias(sqlite_engine, "PROD", "1")
    metrics = RouterMetrics(CollectorRegistry())
    logger = PredictionLogger(engine=sqlite_engine, bus=RecordingBus(), capacity=5, dropped=metrics.dropped)
    h = harness(logger=logger, metrics=metrics)
    assert all(h.infer().status_code == 200 for _ in range(20))
    assert h.sample("router_prediction_logs_dropped_total") == 15
    exposition = h.client.get("/metrics").text
    assert "router_prediction_logs_dropped_total 15.0" in exposition
    assert 'router_requests_total{code="200",model="digits",version="1"} 20.0' in exposition


def test_batched_request_logs_one_record_per_row_with_group_id(sqlite_engine: Engine, real_pod: Pod,
                                                               harness: Callable[..., Harness]) -> None:
    """A 3-row request to a real pod is logged as 3 records sharing the request id as their group id."""
    with session_scope(sqlite_engine) as s:
        _version(s, "1", [real_pod.url])
    _alias(sqlite_engine, "PROD", "1")
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus)
    h = harness(logger=logger)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": [0.25] * 192}]}
    response = h.client.post(f"/v2/models/{MODEL}/infer", json=body, headers={"X-Request-ID": "batch-1"})
    assert response.status_code == 200
    logger.flush()
    records = bus.records()
    assert [r["request_id"] for r in records] == ["batch-1:0", "batch-1:1", "batch-1:2"]
    assert {r["group_request_id"] for r in records} == {"batch-1"}
    assert all(len(r["inputs"]) == 64 and len(r["outputs"]) == 10 for r in records)

