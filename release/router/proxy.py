"""The proxy: the router's HTTP face. Resolves alias -> version -> pods, forwards, answers with the pod's reply.

- ``/v2/models/{m}/infer`` (alias PROD), ``/v2/models/{m}/versions/{ref}/infer``, ``/predictions/{m}/{ref}``,
  ``/predict/{m}/{ref}`` (an alias of ``/predictions``, as on the pod); ``ref`` is a version or an alias.
- The headers a pod reads to decode a body (``FORWARDED_HEADERS``: content type, ``Accept``, the OIP binary
  extension's ``Inference-Header-Content-Length``, request and group ids) go with it; no other.
- Canary weights split PROD traffic (``route_table``); pods are tried as ``pod_client`` says. When every pod of the
  cached route refused, the route is resolved afresh once (a rollback retires the old version's pods within the
  cache TTL).
- Every response carries ``X-Request-ID`` (taken from the request or generated), ``X-Group-Request-ID`` when
  given, ``X-Model-Version`` and ``Server-Timing``; a pod's ``Retry-After`` is passed through.
- Every request is untrusted: its body is refused with 413 ``body_too_large`` past ``max_body_bytes`` (before it
  is read when ``Content-Length`` says so, as soon as it passes the limit when streamed), and metric labels name
  only models the registry knows (``metrics.model_label``).
- Successful predictions of every kind (OIP JSON or binary, ``/predictions``, ``/predict``) are sampled at the
  version's drift policy rate, turned into records (``schemas.prediction_records``) and handed to the prediction
  logger; the pod is told so (``RECORDED_BY_HEADER``) and does not record them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Literal

import structlog
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from release.router.metrics import RouterMetrics, model_label
from release.router.pod_client import Answer, PodClient
from release.router.prediction_log import PredictionLogger
from release.router.request_body import DEFAULT_MAX_BODY_BYTES, check_declared_length, read_limited
from release.router.route_table import PROD, RouteTable, Target
from schemas.error_table import http_status, retry_after
from schemas.errors import ReleaseError
from schemas.pod_records import RECORDED_BY_HEADER
from schemas.prediction_records import Exchange, prediction_records

log = structlog.get_logger(__name__)

#: Request headers passed to the pod. ``content-length`` is not: the client library sets it for the body it sends.
FORWARDED_HEADERS = ("content-type", "accept", "inference-header-content-length", "x-group-request-id")


class Router:
    """The proxy: a Starlette app over a route table and a pool of pod connections.

    ``clock`` times the upstream call and the whole request (Server-Timing, latency metrics); tests inject one.
    ``max_body_bytes`` is the largest request body accepted (``Settings.max_body_mb`` in bytes).
    """

    def __init__(self, *, table: RouteTable, logger: PredictionLogger | None, metrics: RouterMetrics,
                 timeout_s: float = 60.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.perf_counter, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.table = table
        self._max_body_bytes = max_body_bytes
        self._logger = logger
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        self._pods = PodClient(timeout_s=timeout_s, retries=metrics.retries, clock=clock)
        metrics.cache_age.set(table.ttl_s)

    async def startup(self) -> None:
        """Open the keep-alive pool."""
        await self._pods.open()

    async def shutdown(self) -> None:
        """Close the pool."""
        await self._pods.close()

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
        return await self._proxy(request, request.path_params["model"], request.path_params.get("ref", PROD), "ts")

    async def _proxy(self, request: Request, model: str, ref: str, style: Literal["v2", "ts"]) -> Response:
        started = self._clock()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        # Every log line of this request (pod refusals, stale routes, the lookup's thread) carries its id.
        with structlog.contextvars.bound_contextvars(request_id=request_id, model=model):
            return await self._handle(request, model, ref, style, request_id=request_id, started=started)

    async def _handle(self, request: Request, model: str, ref: str, style: Literal["v2", "ts"], *, request_id: str,
                      started: float) -> Response:
        received = datetime.now(UTC)
        group_id = request.headers.get("x-group-request-id")
        headers = {"X-Request-ID": request_id}
        if group_id:
            headers["X-Group-Request-ID"] = group_id
        try:
            target = await asyncio.to_thread(self.table.lookup, model, ref)
        except ReleaseError as error:
            return self._refusal(error, model_label(model, error), headers)
        try:
            body = await self._body(request)
        except ReleaseError as error:
            return self._refusal(error, model, headers)
        path = f"/v2/models/{model}/infer" if style == "v2" else f"/predictions/{model}"
        forward = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        forward.setdefault("content-type", "application/json")
        forward["x-request-id"] = request_id
        if self._logger is not None:  # this router records the request: the pod must not record it again
            forward[RECORDED_BY_HEADER] = "router"
        target, version, answer = await self._send(target, ref, path, body, forward)
        total = self._clock() - started
        headers.update({"X-Model-Version": version, "X-Model-Name": model,
                        "Server-Timing": f"upstream;dur={answer.upstream_s * 1000:.2f}, total;dur={total * 1000:.2f}"})
        if answer.retry_after is not None:  # the pod knows when it will have room again; the client should too
            headers["Retry-After"] = answer.retry_after
        self._metrics.requests.labels(model, version, str(answer.status)).inc()
        self._metrics.latency.labels(model).observe(total)
        self._metrics.overhead.observe(max(0.0, total - answer.upstream_s))
        if answer.status < 400 and self._logger is not None and self._rng.random() < target.sample_rate:
            exchange = Exchange(model=model, version=version, request_id=request_id, group_id=group_id,
                                received_at=received, completed_at=datetime.now(UTC), latency_s=total,
                                request_body=body, answer_body=answer.body, style=style,
                                content_type=forward["content-type"], declared=target.declared,
                                binary_header=_binary_header(forward))
            for record in prediction_records(exchange):
                self._logger.offer(record)
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type, headers=headers)

    async def _body(self, request: Request) -> bytes:
        """The request body, never read past ``max_body_bytes`` (refused unread when its declared length is over)."""
        check_declared_length(request.headers, limit_bytes=self._max_body_bytes)
        return await read_limited(request.stream(), limit_bytes=self._max_body_bytes)

    def _refusal(self, error: ReleaseError, model: str, headers: dict[str, str]) -> Response:
        """The answer when the request cannot be served: the error table's status, reason and hint.

        ``model`` is the metric label, already checked against the registry (``model_label``).
        """
        status = http_status(error)
        if (wait := retry_after(error)) is not None:
            headers["Retry-After"] = wait
        self._metrics.requests.labels(model, "-", str(status)).inc()
        return JSONResponse({"error": error.message, "reason": str(error.reason), "hint": error.hint},
                            status_code=status, headers=headers)

    async def _send(self, target: Target, ref: str, path: str, body: bytes,
                    forward: dict[str, str]) -> tuple[Target, str, Answer]:
        """Send to the target's pods; when all refused, once more to a freshly resolved route if it differs."""
        version, endpoints = target.pick(self._rng)
        answer = await self._pods.send(version, endpoints, path, body, forward)
        if not answer.refused:
            return target, version, answer
        # Every pod of the version refused before running the request: the cached route is stale (the version
        # was retired after an alias moved, within the cache TTL). Resolve afresh and go there once.
        log.info("router.route_refused", version=version, pods=len(endpoints))
        self.table.invalidate(target.model)
        try:
            fresh = await asyncio.to_thread(self.table.lookup, target.model, ref)
        except ReleaseError:
            return target, version, answer
        again = fresh.pick(self._rng)
        if again == (version, endpoints):
            return target, version, answer
        return fresh, again[0], await self._pods.send(*again, path, body, forward)


def _binary_header(headers: dict[str, str]) -> int | None:
    """The OIP binary extension's JSON header length, when the request declares one (the pod checked it)."""
    declared = headers.get("inference-header-content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


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
