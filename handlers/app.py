"""The pod's HTTP layer (Starlette): routes translate HTTP to data-plane calls and errors to status codes.

Open Inference Protocol v2 (health, metadata, infer, with optional ``/versions/{v}``), TorchServe's ``/ping``
and ``/predictions/{m}[/{v}]`` (plus a ``/predict`` alias), and Prometheus ``/metrics``. Every response carries
``X-Request-ID`` (echoed or generated) and ``X-Model-Version`` (and ``X-Pod-Worker``, the front's pid, when
several HTTP worker processes serve one model). The request id is bound to the structlog context while a request
is handled, so every log line of that request carries it; server errors (5xx) are logged as ``request.failed``.

The routes talk to a ``ServingRuntime``: the model itself in this process (``dataplane.ModelRuntime``) or a front
that hands decoded requests to the model process (``front.FrontRuntime``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from handlers.base import InferenceRequest, InferenceResult
from handlers.http_errors import error_body, http_status, retry_after
from handlers.settings import PodSettings
from handlers.wire import (
    JSON_OPTIONS,
    decode_infer,
    decode_predictions,
    infer_response,
    predictions_response,
    read_body,
)
from schemas.errors import NotFound, PermanentError, Reason, ReleaseError, TemporaryError
from schemas.manifest import TensorSpec

log = structlog.get_logger("handlers.app")
HTTP_SERVER_ERROR = 500  # answers from here up are logged: the pod's failures, not the client's
Endpoint = Callable[[Request, str], Awaitable[Response]]


class BatchQueue(Protocol):
    """The batcher as the routes see it."""

    arriving: int

    @property
    def depth(self) -> int:
        """Requests waiting for a batch slot."""

    async def infer(self, request: InferenceRequest, *, timeout_s: float) -> InferenceResult:
        """Queue one request and wait for its result (or its error)."""


class ServingRuntime(Protocol):
    """What the routes need from the data plane: identity, lifecycle flags, the batcher, metrics."""

    settings: PodSettings
    ready: bool
    draining: bool
    in_flight: int

    @property
    def name(self) -> str:
        """The name the model is served under."""

    @property
    def version(self) -> str:
        """The version the model is served as."""

    @property
    def input_specs(self) -> list[TensorSpec] | None:
        """The declared inputs, or None when the handler decides."""

    @property
    def batcher(self) -> BatchQueue:
        """Where inference requests go."""

    @property
    def worker(self) -> str | None:
        """The value of ``X-Pod-Worker``, or None to send no such header."""

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata."""

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""

    async def scrape(self) -> bytes:
        """The Prometheus text exposition of the pod's metrics."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving (the batch worker, or the link to the model process) on the app's event loop."""


def new_request_id() -> str:
    """32 random hex digits, like ``uuid4().hex``: an id, not a secret, so no system call for the randomness
    (``uuid4`` reads ``os.urandom``, a visible share of a request's time under load). ``random`` is reseeded in
    every forked process, so fronts do not repeat each other."""
    return f"{random.getrandbits(128):032x}"


def json_response(body: Any, *, status: int = 200) -> Response:
    """A JSON response written by orjson."""
    return Response(orjson.dumps(body, option=JSON_OPTIONS), status_code=status, media_type="application/json")


class PodApi:
    """The routes of one pod, bound to its runtime."""

    def __init__(self, runtime: ServingRuntime):
        self.runtime = runtime
        self._idle: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------ plumbing
    def _error_response(self, error: ReleaseError) -> Response:
        response = json_response(error_body(error), status=http_status(error))
        after = retry_after(error)
        if after is not None:
            response.headers["retry-after"] = after
        return response

    async def _answer(self, name: str, handler: Endpoint, request: Request, request_id: str) -> Response:
        """The handler's response, or the error table's answer to what it raised (server errors are logged)."""
        try:
            return await handler(request, request_id)
        except ReleaseError as e:
            error = e
            if http_status(error) >= HTTP_SERVER_ERROR:
                log.warning("request.failed", endpoint=name, reason=str(error.reason), error=error.message)
        except Exception as e:
            log.exception("request.failed", endpoint=name)
            error = PermanentError(f"internal error: {type(e).__name__}", reason=Reason.INTERNAL)
        return self._error_response(error)

    def endpoint(self, name: str, handler: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a route: request id (in the log context too), error table, version header, count and latency."""
        observe = self.runtime.observe
        version = self.runtime.version
        worker = self.runtime.worker

        async def route(request: Request) -> Response:
            started = time.perf_counter()
            request_id = request.headers.get("x-request-id") or new_request_id()
            bound = structlog.contextvars.bind_contextvars(request_id=request_id)
            try:
                response = await self._answer(name, handler, request, request_id)
            finally:
                structlog.contextvars.reset_contextvars(**bound)
            response.headers["x-request-id"] = request_id
            response.headers["x-model-version"] = version
            if worker is not None:
                response.headers["x-pod-worker"] = worker
            observe(name, response.status_code, time.perf_counter() - started)
            return response

        return route

    def _check_model(self, request: Request) -> None:
        model = request.path_params["model"]
        if model != self.runtime.name:
            raise NotFound(f"this pod serves {self.runtime.name!r}, not {model!r}", reason=Reason.MODEL_NOT_FOUND)
        version = request.path_params.get("version")
        if version is not None and version != self.runtime.version:
            raise NotFound(f"this pod serves version {self.runtime.version!r} of {model!r}, not {version!r}",
                           reason=Reason.VERSION_NOT_FOUND)

    def _check_accepting(self) -> None:
        if self.runtime.draining or not self.runtime.ready:
            raise TemporaryError("the model server is not ready (starting or draining)", reason=Reason.NOT_READY,
                                 delay=1.0)

    async def _run(self, request: Request, decode: Callable[[bytes], InferenceRequest]) -> InferenceResult:
        self._check_model(request)
        self._check_accepting()
        runtime = self.runtime
        batcher = runtime.batcher
        runtime.in_flight += 1
        batcher.arriving += 1
        arriving = True
        try:
            body = await read_body(request, limit=runtime.settings.max_body_bytes)
            decoded = decode(body)
            batcher.arriving -= 1
            arriving = False
            return await batcher.infer(decoded, timeout_s=runtime.settings.request_timeout_s)
        finally:
            if arriving:
                batcher.arriving -= 1
            runtime.in_flight -= 1
            if runtime.in_flight == 0 and self._idle is not None:
                self._idle.set()

    # ------------------------------------------------------------------------------------------ routes
    async def live(self, request: Request, request_id: str) -> Response:
        """Liveness: the process answers."""
        return json_response({"live": True})

    async def ready(self, request: Request, request_id: str) -> Response:
        """Readiness: loaded, warmed up and not draining."""
        ready = self.runtime.ready and not self.runtime.draining
        return json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: Request, request_id: str) -> Response:
        """OIP server metadata."""
        return json_response({"name": "handlers.server", "version": "1", "extensions": []})

    async def model_metadata(self, request: Request, request_id: str) -> Response:
        """OIP model metadata: name, versions, platform, inputs and outputs."""
        self._check_model(request)
        return json_response(self.runtime.metadata())

    async def model_ready(self, request: Request, request_id: str) -> Response:
        """OIP model readiness."""
        self._check_model(request)
        ready = self.runtime.ready and not self.runtime.draining
        return json_response({"name": self.runtime.name, "ready": ready}, status=200 if ready else 503)

    async def infer(self, request: Request, request_id: str) -> Response:
        """OIP infer."""
        specs = self.runtime.input_specs
        headers = request.headers
        holder: list[str] = []

        def decode(body: bytes) -> InferenceRequest:
            decoded = decode_infer(body, specs=specs, request_id=request_id, headers=headers)
            holder.append(decoded.id)
            return decoded

        result = await self._run(request, decode)
        body = infer_response(result, model=self.runtime.name, version=self.runtime.version, request_id=holder[0])
        return Response(body, media_type="application/json")

    async def predictions(self, request: Request, request_id: str) -> Response:
        """TorchServe-style prediction: JSON or raw bytes in, the handler's answer out."""
        specs = self.runtime.input_specs
        headers = request.headers
        content_type = headers.get("content-type", "")

        def decode(body: bytes) -> InferenceRequest:
            return decode_predictions(body, content_type=content_type, specs=specs, request_id=request_id,
                                      headers=headers)

        result = await self._run(request, decode)
        body, media_type = predictions_response(result)
        return Response(body, status_code=result.status or 200, media_type=media_type)

    async def ping(self, request: Request, request_id: str) -> Response:
        """TorchServe's health check."""
        ready = self.runtime.ready and not self.runtime.draining
        return json_response({"status": "Healthy" if ready else "Unhealthy"}, status=200 if ready else 503)

    async def prometheus(self, request: Request, request_id: str) -> Response:
        """Prometheus text exposition of the pod's registry."""
        return Response(await self.runtime.scrape(), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------------------------------ lifecycle
    def begin_drain(self) -> asyncio.Event:
        """Stop admitting work; the event is set once no inference request is in flight."""
        self.runtime.draining = True
        self._idle = asyncio.Event()
        if self.runtime.in_flight == 0:
            self._idle.set()
        return self._idle

    def direct_routes(self) -> dict[tuple[str, str], tuple[Callable[[Request], Awaitable[Response]],
                                                               dict[str, str]]]:
        """``(method, path) -> (route, path parameters)`` for inference on the served model (and its version)."""
        params = {"model": self.runtime.name, "version": self.runtime.version}
        direct = {}
        for path, name, method, methods in ROUTES:
            if name not in ("infer", "predictions"):
                continue
            route = self.endpoint(name, getattr(self, method))
            used = {key: value for key, value in params.items() if "{" + key + "}" in path}
            concrete = path.format(**used)
            for verb in methods:
                direct[(verb, concrete)] = (route, used)
        return direct

    def routes(self) -> list[Route]:
        """Every route of the pod."""
        return [Route(path, self.endpoint(name, getattr(self, method)), methods=list(methods))
                for path, name, method, methods in ROUTES]


# (path, ``endpoint`` label of its metrics, PodApi method, HTTP methods)
ROUTES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("/v2/health/live", "health", "live", ("GET",)),
    ("/v2/health/ready", "health", "ready", ("GET",)),
    ("/v2", "metadata", "server_metadata", ("GET",)),
    ("/v2/models/{model}", "metadata", "model_metadata", ("GET",)),
    ("/v2/models/{model}/versions/{version}", "metadata", "model_metadata", ("GET",)),
    ("/v2/models/{model}/ready", "health", "model_ready", ("GET",)),
    ("/v2/models/{model}/versions/{version}/ready", "health", "model_ready", ("GET",)),
    ("/v2/models/{model}/infer", "infer", "infer", ("POST",)),
    ("/v2/models/{model}/versions/{version}/infer", "infer", "infer", ("POST",)),
    ("/ping", "health", "ping", ("GET", "POST")),
    ("/predictions/{model}", "predictions", "predictions", ("POST", "PUT")),
    ("/predictions/{model}/{version}", "predictions", "predictions", ("POST", "PUT")),
    ("/predict/{model}", "predictions", "predictions", ("POST", "PUT")),
    ("/predict/{model}/{version}", "predictions", "predictions", ("POST", "PUT")),
    ("/metrics", "metrics", "prometheus", ("GET",)),
)


def create_app(api: PodApi) -> ASGIApp:
    """The pod's ASGI app; its lifespan starts the runtime and marks the pod ready.

    Inference requests for the served model and version skip Starlette's middleware and its route-by-route
    regular expressions: one dict lookup on method and path finds their endpoint (the same wrapped route, so the
    same headers, errors and metrics). Everything else, a wrong model name included, goes through Starlette.
    """

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        api.runtime.start(asyncio.get_running_loop())
        api.runtime.ready = True
        yield

    starlette = Starlette(routes=api.routes(), lifespan=lifespan)
    direct = api.direct_routes()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            found = direct.get((scope["method"], scope["path"]))
            if found is not None:
                route, params = found
                scope["path_params"] = dict(params)
                response = await route(Request(scope, receive))
                await response(scope, receive, send)
                return
        await starlette(scope, receive, send)

    return app
