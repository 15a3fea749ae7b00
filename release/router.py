"""The router: the one address clients use. Resolves alias -> version -> pods and proxies the request.

- ``/v2/models/{m}/infer`` (alias PROD), ``/v2/models/{m}/versions/{ref}/infer``, ``/predictions/{m}/{ref}``,
  ``/predict/{m}/{ref}``; ``ref`` is a version or an alias.
- Resolution is cached for at most ``ttl_s`` (staleness bound < 1 s); ``invalidate`` drops it at once when an
  ``alias.moved`` event is seen in-process.
- Canary weights split PROD traffic; pods of a version are used round robin over keep-alive pools; a request is
  retried on another pod only when no pod ran it: the connection failed, or the pod refused with 503 not_ready
  (starting or draining), never after the pod may have run it. When every pod of the cached route refused, the
  route is resolved afresh once (a rollback retires the old version's pods within the cache TTL).
- Every response carries ``X-Request-ID`` (taken from the request or generated), ``X-Group-Request-ID`` when
  given, ``X-Model-Version`` and ``Server-Timing``.
- Predictions are logged to ``prediction-logs`` sampled, batched and off the request path through a bounded
  buffer: logging never blocks or fails a prediction; a full buffer drops records and counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from release import registry
from release.db import session_scope
from release.ports import EventBus
from schemas.error_table import http_status, retry_after
from schemas.errors import NotFound, Reason, ReleaseError
from schemas.events import EventType, Topic, make_event
from schemas.predictions import PredictionBatch, PredictionRecord

log = structlog.get_logger(__name__)
PROD = registry.PROD


@dataclass(frozen=True)
class Target:
    """Where a request for (model, ref) goes: the version and its pods, plus canary splits for PROD."""

    model: str
    version: str
    endpoints: tuple[str, ...]
    canaries: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    sample_rate: float = 1.0
    resolved_at: float = 0.0

    def pick(self, rng: random.Random) -> tuple[str, tuple[str, ...]]:
        """The version and pods for one request, honouring canary weights."""
        roll = rng.uniform(0, 100)
        for version, endpoints, weight in self.canaries:
            if roll < weight and endpoints:
                return version, endpoints
            roll -= weight
        return self.version, self.endpoints


class RouteTable:
    """alias -> version -> pods, cached with a bounded staleness."""

    def __init__(self, *, engine: Engine, ttl_s: float = 0.5) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, str], Target] = {}
        self._lock = threading.Lock()

    def invalidate(self, model: str | None = None) -> None:
        """Forget cached routes (of one model, or all)."""
        with self._lock:
            for key in [k for k in self._cache if model is None or k[0] == model]:
                del self._cache[key]

    def lookup(self, model: str, ref: str) -> Target:
        """The target for ``ref`` (a version or alias), from cache when fresh enough."""
        now = time.monotonic()
        cached = self._cache.get((model, ref))
        if cached is not None and now - cached.resolved_at < self._ttl_s:
            return cached
        target = self._resolve(model, ref, now)
        with self._lock:
            self._cache[(model, ref)] = target
        return target

    def _resolve(self, model: str, ref: str, now: float) -> Target:
        with session_scope(self._engine) as s:
            view = registry.resolve(s, model, ref)
            endpoints = self._endpoints(s, view.id)
            canaries: list[tuple[str, tuple[str, ...], int]] = []
            if ref == PROD:
                for version, weight in registry.route_weights(s, model).items():
                    if version != view.version:
                        other = registry.get_version(s, model, version)
                        canaries.append((version, self._endpoints(s, other.id), weight))
            rate = float(view.policy.get("drift", {}).get("sample_rate", 1.0))
        if not endpoints and not canaries:
            raise NotFound(f"{model}/{view.version} has no ready pods", reason=Reason.NOT_READY,
                           hint="The version is not being served; see `release show NAME VERSION`.")
        return Target(model=model, version=view.version, endpoints=endpoints, canaries=tuple(canaries),
                      sample_rate=rate, resolved_at=now)

    @staticmethod
    def _endpoints(session: Any, version_id: int) -> tuple[str, ...]:
        deployment = registry.get_deployment(session, version_id)
        if deployment is None or deployment.status != "ready":
            return ()
        return tuple(deployment.endpoints)


class PredictionLogger:
    """Bounded, batched, asynchronous publisher of prediction records. Never blocks a request."""

    def __init__(self, *, engine: Engine, bus: EventBus, capacity: int = 10_000, batch: int = 500,
                 interval_s: float = 0.5, dropped: Counter | None = None) -> None:
        self._engine = engine
        self._bus = bus
        self._buffer: deque[PredictionRecord] = deque()
        self._capacity = capacity
        self._batch = batch
        self._interval_s = interval_s
        self._dropped = dropped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self.published = 0

    def start(self) -> None:
        """Start the background publisher."""
        self._thread.start()

    def offer(self, record: PredictionRecord) -> None:
        """Queue a record, or drop and count it when the buffer is full."""
        if len(self._buffer) >= self._capacity:
            if self._dropped is not None:
                self._dropped.inc()
            return
        self._buffer.append(record)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Publish what is buffered, one event per model and batch."""
        while self._buffer:
            chunk: list[PredictionRecord] = []
            while self._buffer and len(chunk) < self._batch:
                chunk.append(self._buffer.popleft())
            by_model: dict[str, list[PredictionRecord]] = {}
            for record in chunk:
                by_model.setdefault(record.model, []).append(record)
            try:
                with session_scope(self._engine) as s:
                    for records in by_model.values():
                        data = PredictionBatch(records=records).model_dump(mode="json")
                        self._bus.publish(make_event(EventType.PREDICTIONS_LOGGED, data),
                                          topic=Topic.PREDICTION_LOGS, session=s)
                self.published += len(chunk)
            except ReleaseError as error:
                log.warning("prediction_log.publish_failed", error=str(error), dropped=len(chunk))
                if self._dropped is not None:
                    self._dropped.inc(len(chunk))

    def close(self) -> None:
        """Stop after publishing what is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


class RouterMetrics:
    """Prometheus metrics of the router."""

    def __init__(self, registry_: CollectorRegistry) -> None:
        self.registry = registry_
        self.requests = Counter("router_requests", "Requests proxied, by model, version and HTTP code.",
                                ["model", "version", "code"], registry=registry_)
        self.latency = Histogram("router_request_latency_seconds", "Total time in the router per request.",
                                 ["model"], registry=registry_,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.overhead = Histogram("router_overhead_seconds", "Router time outside the upstream call.",
                                  registry=registry_, buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .05))
        self.retries = Counter("router_upstream_retries",
                               "Attempts retried on another pod: connect error or not-ready refusal.",
                               registry=registry_)
        self.dropped = Counter("router_prediction_logs_dropped", "Prediction records dropped: buffer full.",
                               registry=registry_)
        self.cache_age = Gauge("router_route_cache_ttl_seconds", "Upper bound of route staleness.",
                               registry=registry_)


class Router:
    """The proxy: a Starlette app over a route table and an aiohttp client pool."""

    def __init__(self, *, table: RouteTable, logger: PredictionLogger | None, metrics: RouterMetrics,
                 timeout_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.table = table
        self._logger = logger
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._rng = rng or random.Random()
        self._next: dict[str, int] = {}
        metrics.cache_age.set(table._ttl_s)

    async def startup(self) -> None:
        """Open the keep-alive pool."""
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=128, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def shutdown(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()

    def routes(self) -> list[Route]:
        """The router's routes."""
        return [
            Route("/v2/models/{model}/infer", self._infer_prod, methods=["POST"]),
            Route("/v2/models/{model}/versions/{ref}/infer", self._infer_ref, methods=["POST"]),
            Route("/predictions/{model}/{ref}", self._predictions, methods=["POST"]),
            Route("/predictions/{model}", self._predictions, methods=["POST"]),
            Route("/predict/{model}/{ref}", self._predict, methods=["POST"]),
            Route("/predict/{model}", self._predict, methods=["POST"]),
            Route("/v2/health/live", self._live, methods=["GET"]),
            Route("/v2/health/ready", self._live, methods=["GET"]),
            Route("/metrics", self._metrics_endpoint, methods=["GET"]),
        ]

    async def _live(self, _request: Request) -> Response:
        return JSONResponse({"live": True})

    async def _metrics_endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self._metrics.registry), media_type="text/plain; version=0.0.4")

    async def _infer_prod(self, request: Request) -> Response:
        return await self._proxy(request, request.path_params["model"], PROD, "v2")

    async def _infer_ref(self, request: Request) -> Response:
        return await self._proxy(request, request.path_params["model"], request.path_params["ref"], "v2")

    async def _predictions(self, request: Request) -> Response:
        return await self._proxy(request, request.path_params["model"], request.path_params.get("ref", PROD), "ts")

    async def _predict(self, request: Request) -> Response:
        return await self._proxy(request, request.path_params["model"], request.path_params.get("ref", PROD), "v2")

    async def _proxy(self, request: Request, model: str, ref: str, style: str) -> Response:
        started = time.perf_counter()
        received = datetime.now(UTC)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        group_id = request.headers.get("x-group-request-id")
        headers = {"X-Request-ID": request_id}
        if group_id:
            headers["X-Group-Request-ID"] = group_id
        try:
            target = await asyncio.to_thread(self.table.lookup, model, ref)
        except ReleaseError as error:
            status = http_status(error)
            if (wait := retry_after(error)) is not None:
                headers["Retry-After"] = wait
            self._metrics.requests.labels(model, "-", str(status)).inc()
            return JSONResponse({"error": error.message, "reason": str(error.reason), "hint": error.hint},
                                status_code=status, headers=headers)
        version, endpoints = target.pick(self._rng)
        body = await request.body()
        path = (f"/v2/models/{model}/infer" if style == "v2" else f"/predictions/{model}")
        forward = {"content-type": request.headers.get("content-type", "application/json"),
                   "x-request-id": request_id}
        status, payload, content_type, upstream_s, refused = await self._forward(version, endpoints, path, body,
                                                                                  forward)
        if refused:
            # Every pod of the version refused before running the request: the cached route is stale (the
            # version was retired after an alias moved, within the cache TTL). Resolve afresh and go there once.
            self.table.invalidate(model)
            with contextlib.suppress(ReleaseError):
                fresh = await asyncio.to_thread(self.table.lookup, model, ref)
                again = fresh.pick(self._rng)
                if again != (version, endpoints):
                    target, (version, endpoints) = fresh, again
                    status, payload, content_type, upstream_s, _ = await self._forward(version, endpoints, path,
                                                                                        body, forward)
        total = time.perf_counter() - started
        headers.update({"X-Model-Version": version, "X-Model-Name": model,
                        "Server-Timing": f"upstream;dur={upstream_s * 1000:.2f}, total;dur={total * 1000:.2f}"})
        self._metrics.requests.labels(model, version, str(status)).inc()
        self._metrics.latency.labels(model).observe(total)
        self._metrics.overhead.observe(max(0.0, total - upstream_s))
        if status < 400 and self._logger is not None and self._rng.random() < target.sample_rate:
            self._log(model, version, request_id, group_id, received, total, body, payload)
        return Response(payload, status_code=status, media_type=content_type, headers=headers)

    async def _forward(self, version: str, endpoints: tuple[str, ...], path: str, body: bytes,
                       forward: dict[str, str]) -> tuple[int, bytes, str, float, bool]:
        """Send to the version's pods round robin; try the next pod only when this one never ran the request.

        Returns status, body, content type, upstream seconds, and whether every pod refused without running it.
        """
        assert self._session is not None
        status, payload, content_type, upstream_s = 503, b"", "application/json", 0.0
        for attempt in range(len(endpoints)):
            endpoint = endpoints[(self._next.get(version, 0) + attempt) % len(endpoints)]
            t0 = time.perf_counter()
            try:
                async with self._session.post(endpoint.rstrip("/") + path, data=body, headers=forward) as resp:
                    payload = await resp.read()
                    status = resp.status
                    content_type = resp.headers.get("content-type", content_type)
                upstream_s = time.perf_counter() - t0
            except aiohttp.ClientConnectorError as exc:
                # Connection refused or reset before sending: the pod never saw it, another pod may take it.
                self._metrics.retries.inc()
                payload = orjson.dumps({"error": f"pod unreachable: {exc}", "reason": str(Reason.UNAVAILABLE)})
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The pod may have run it (disconnect mid-answer, timeout): answer, never retry.
                status = 504 if isinstance(exc, TimeoutError) else 502
                payload = orjson.dumps({"error": f"pod failed: {type(exc).__name__}: {exc}",
                                        "reason": str(Reason.UNAVAILABLE)})
                upstream_s = time.perf_counter() - t0
                break
            if not _not_ready(status, payload):
                break
            self._metrics.retries.inc()  # a draining or starting pod refuses before running anything
        else:
            self._next[version] = self._next.get(version, 0) + 1
            return status, payload, content_type, upstream_s, True
        self._next[version] = self._next.get(version, 0) + 1
        return status, payload, content_type, upstream_s, False

    def _log(self, model: str, version: str, request_id: str, group_id: str | None, received: datetime,
             total_s: float, body: bytes, payload: bytes) -> None:
        assert self._logger is not None
        try:
            rows, outputs = _rows(orjson.loads(body)), _rows(orjson.loads(payload), key="outputs")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            rows, outputs = [], []
        completed = datetime.now(UTC)
        for i in range(max(len(rows), 1) if rows else 0):
            out = outputs[i] if i < len(outputs) else None
            self._logger.offer(PredictionRecord(
                request_id=request_id if len(rows) == 1 else f"{request_id}:{i}",
                group_request_id=group_id or (request_id if len(rows) > 1 else None), model=model,
                version=version, received_at=received, completed_at=completed, latency_ms=total_s * 1000,
                inputs=rows[i], outputs=out,
                predicted_class=int(max(range(len(out)), key=out.__getitem__)) if out else None))


def _not_ready(status: int, payload: bytes) -> bool:
    """True when a pod refused with 503 not_ready (starting or draining): it ran nothing."""
    if status != 503:
        return False
    try:
        return bool(orjson.loads(payload).get("reason") == str(Reason.NOT_READY))
    except (orjson.JSONDecodeError, AttributeError):
        return False


def _rows(document: Any, *, key: str = "inputs") -> list[list[float]]:
    """The first tensor of an OIP body split into rows of floats."""
    tensor = document[key][0]
    data = tensor["data"]
    flat: list[float] = []
    stack = [data]
    while stack:  # OIP allows nested lists; flatten without recursion
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(float(item))
    shape = tensor["shape"]
    n = shape[0] if len(shape) > 1 else 1
    width = len(flat) // max(n, 1)
    return [flat[i * width:(i + 1) * width] for i in range(n)]


def build_router_app(router: Router, *, extra_routes: list[Route] | None = None) -> Starlette:
    """The Starlette app of the router (plus any management routes)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await router.startup()
        try:
            yield
        finally:
            await router.shutdown()

    return Starlette(routes=[*router.routes(), *(extra_routes or [])], lifespan=lifespan)
