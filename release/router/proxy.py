"""The proxy: the router's HTTP face. Resolves alias -> version -> pods, forwards, answers with the pod's reply.

- ``/v2/models/{m}/infer`` (alias PROD), ``/v2/models/{m}/versions/{ref}/infer``, ``/predictions/{m}/{ref}``,
  ``/predict/{m}/{ref}`` (an alias of ``/predictions``, as on the pod); ``ref`` is a version or an alias.
- The headers a pod reads to decode a body (``asgi.FORWARDED_HEADERS``: content type, ``Accept``, the OIP binary
  extension's ``Inference-Header-Content-Length``, request and group ids) go with it; no other.
- Canary weights split PROD traffic (``route_table``); pods are tried as ``pod_client`` says. When every pod of the
  cached route refused, the route is resolved afresh once (a rollback retires the old version's pods within the
  cache TTL).
- The fast path: the proxy endpoints are plain ASGI (``asgi``); a fresh cached route is taken on the event loop
  with no thread hop, and only a miss or an expired entry reads the registry in a worker thread, once per
  (model, ref) however many requests wait for it; metrics children are kept (``RouterMetrics.count``).
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
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import structlog
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from release.router.asgi import METHOD_NOT_ALLOWED, Incoming, ProxyCall, Reply, json_reply, proxy_call, read_headers
from release.router.metrics import RouterMetrics, model_label
from release.router.pod_client import Answer, PodClient
from release.router.prediction_log import PredictionLogger
from release.router.request_body import DEFAULT_MAX_BODY_BYTES, check_declared_length, receive_body
from release.router.route_table import PROD, RouteTable, Target
from schemas.error_table import http_status, retry_after
from schemas.errors import ReleaseError
from schemas.pod_records import RECORDED_BY_HEADER
from schemas.prediction_records import Exchange, prediction_records

log = structlog.get_logger(__name__)


class Router:
    """The proxy: plain ASGI endpoints over a route table and a pool of pod connections.

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
        self._resolving: dict[tuple[str, str], asyncio.Future[Target]] = {}
        metrics.cache_age.set(table.ttl_s)

    async def startup(self) -> None:
        """Open the keep-alive pool."""
        await self._pods.open()

    async def shutdown(self) -> None:
        """Close the pool."""
        await self._pods.close()

    def routes(self) -> list[Route]:
        """The router's routes besides the proxy endpoints: health and metrics."""
        return [Route("/v2/health/live", self._live, methods=["GET"]),
                Route("/v2/health/ready", self._live, methods=["GET"]),
                Route("/metrics", self._metrics_endpoint, methods=["GET"])]

    async def _live(self, _request: Request) -> Response:
        return JSONResponse({"live": True})

    async def _metrics_endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self._metrics.registry), media_type="text/plain; version=0.0.4")

    async def serve(self, call: ProxyCall, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request to a proxy endpoint."""
        if scope["method"] != "POST":
            await METHOD_NOT_ALLOWED.send(send)
            return
        started = self._clock()
        incoming = read_headers(scope)
        request_id = incoming.request_id or os.urandom(16).hex()
        # Every log line of this request (pod refusals, stale routes, the lookup's thread) carries its id.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id, model=call.model)
        try:
            reply = await self._handle(call, incoming, receive, request_id=request_id, started=started)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
        if reply is not None:  # None: the client left before its body was read, nobody is there to answer
            await reply.send(send)

    async def _handle(self, call: ProxyCall, incoming: Incoming, receive: Receive, *, request_id: str,
                      started: float) -> Reply | None:
        received = datetime.now(UTC)
        forward = incoming.forward
        headers = [(b"x-request-id", request_id.encode("latin-1"))]
        if group_id := forward.get("x-group-request-id"):
            headers.append((b"x-group-request-id", group_id.encode("latin-1")))
        try:
            target = self.table.cached(call.model, call.ref) or await self._resolve(call.model, call.ref)
        except ReleaseError as error:
            return self._refusal(error, model_label(call.model, error), headers)
        try:
            incoming.check()
            check_declared_length(incoming.content_length, limit_bytes=self._max_body_bytes)
            body = await receive_body(receive, limit_bytes=self._max_body_bytes)
        except ReleaseError as error:
            return self._refusal(error, call.model, headers)
        if body is None:
            return None
        forward.setdefault("content-type", "application/json")
        forward["x-request-id"] = request_id
        if self._logger is not None:  # this router records the request: the pod must not record it again
            forward[RECORDED_BY_HEADER] = "router"
        target, version, answer = await self._send(target, call, body, forward)
        total = self._clock() - started
        headers += [(b"x-model-version", version.encode()), (b"x-model-name", call.model.encode()),
                    (b"server-timing", f"upstream;dur={answer.upstream_s * 1000:.2f}, "
                                       f"total;dur={total * 1000:.2f}".encode())]
        if answer.retry_after is not None:  # the pod knows when it will have room again; the client should too
            headers.append((b"retry-after", answer.retry_after.encode("latin-1")))
        self._metrics.count(call.model, version, answer.status)
        self._metrics.observe(call.model, total_s=total, upstream_s=answer.upstream_s)
        if answer.status < 400 and self._logger is not None and self._rng.random() < target.sample_rate:
            exchange = Exchange(model=call.model, version=version, request_id=request_id, group_id=group_id,
                                received_at=received, completed_at=datetime.now(UTC), latency_s=total,
                                request_body=body, answer_body=answer.body, style=call.style,
                                content_type=forward["content-type"], declared=target.declared,
                                binary_header=_binary_header(forward))
            for record in prediction_records(exchange):
                self._logger.offer(record)
        return Reply(answer.status, answer.body, headers, answer.content_type)

    async def _resolve(self, model: str, ref: str) -> Target:
        """Look the route up in a worker thread; requests that miss together share one lookup."""
        key = (model, ref)
        lookup = self._resolving.get(key)
        if lookup is None:
            lookup = self._resolving[key] = asyncio.ensure_future(asyncio.to_thread(self.table.lookup, model, ref))
            lookup.add_done_callback(lambda done: self._looked_up(key, done))
        # A waiter that goes away (its client disconnected) must not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    def _looked_up(self, key: tuple[str, str], done: asyncio.Future[Target]) -> None:
        del self._resolving[key]
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every waiter went away before it came

    def _refusal(self, error: ReleaseError, model: str, headers: list[tuple[bytes, bytes]]) -> Reply:
        """The answer when the request cannot be served: the error table's status, reason and hint.

        ``model`` is the metric label, already checked against the registry (``model_label``).
        """
        status = http_status(error)
        if (wait := retry_after(error)) is not None:
            headers.append((b"retry-after", wait.encode()))
        self._metrics.count(model, "-", status)
        return json_reply(status, {"error": error.message, "reason": str(error.reason), "hint": error.hint}, headers)

    async def _send(self, target: Target, call: ProxyCall, body: bytes,
                    forward: dict[str, str]) -> tuple[Target, str, Answer]:
        """Send to the target's pods; when all refused, once more to a freshly resolved route if it differs."""
        version, endpoints = target.pick(self._rng)
        answer = await self._pods.send(version, endpoints, call.pod_path, body, forward)
        if not answer.refused:
            return target, version, answer
        # Every pod of the version refused before running the request: the cached route is stale (the version
        # was retired after an alias moved, within the cache TTL). Resolve afresh and go there once.
        log.info("router.route_refused", version=version, pods=len(endpoints))
        self.table.invalidate(target.model)
        try:
            fresh = await asyncio.to_thread(self.table.lookup, target.model, call.ref)
        except ReleaseError:
            return target, version, answer
        again = fresh.pick(self._rng)
        if again == (version, endpoints):
            return target, version, answer
        return fresh, again[0], await self._pods.send(*again, call.pod_path, body, forward)


def _binary_header(headers: dict[str, str]) -> int | None:
    """The OIP binary extension's JSON header length, when the request declares one (the pod checked it)."""
    declared = headers.get("inference-header-content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def build_router_app(router: Router, *, extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The router's ASGI app: the proxy endpoints served by ``router``, the rest (its health and metrics routes,
    any management routes, the lifespan that opens the pod pool) by Starlette."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await router.startup()
        try:
            yield
        finally:
            await router.shutdown()

    rest = Starlette(routes=[*router.routes(), *extra_routes], lifespan=lifespan)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        call = proxy_call(scope, default_ref=PROD) if scope["type"] == "http" else None
        if call is None:
            await rest(scope, receive, send)
        else:
            await router.serve(call, scope, receive, send)

    return app
