"""The request side of pod-made prediction records: an ASGI wrapper around the pod's app.

For a sampled prediction request (OIP infer, ``/predictions``, ``/predict``) that the router does not record
itself (no ``RECORDED_BY_HEADER``), it keeps references to the body chunks going in and out and, once a
successful answer is sent, offers them to the ``PredictionEmitter``; every other request passes untouched. It
also starts and stops the emitter with the app's lifespan and appends the emitter's counters to ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from handlers.prediction_emitter import Captured, PredictionEmitter
from handlers.settings import PodSettings
from schemas.manifest import TensorSpec
from schemas.pod_records import RECORDED_BY_HEADER

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

_RECORDED_BY = RECORDED_BY_HEADER.encode()
_HTTP_ERROR = 400


def with_prediction_records(app: Asgi, *, settings: PodSettings, model: str, version: str,
                            declared: list[TensorSpec] | None) -> Asgi:
    """``app`` wrapped to record predictions when ``--record-predictions`` is on; else ``app`` itself."""
    if not settings.record_predictions:
        return app
    emitter = PredictionEmitter(model=model, version=version, declared=tuple(declared or ()),
                                sample_rate=settings.prediction_sample_rate, registry=CollectorRegistry())
    return RecordingApp(app, emitter)


def _style(scope: Scope) -> str | None:
    """``v2`` or ``ts`` for a prediction request, None for anything else."""
    if scope["method"] not in ("POST", "PUT"):
        return None
    path: str = scope["path"]
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return "ts" if path.startswith(("/predictions/", "/predict/")) else None


class RecordingApp:
    """The pod's app, recording sampled predictions through ``emitter``."""

    def __init__(self, app: Asgi, emitter: PredictionEmitter):
        self.app = app
        self.emitter = emitter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
        elif scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == "/metrics":
            await self.app(scope, receive, self._metrics_send(send))
        elif (style := _style(scope)) is None or not self.emitter.sampled() or _header(scope, _RECORDED_BY):
            await self.app(scope, receive, send)
        else:
            await self._recorded(style, scope, receive, send)

    async def _recorded(self, style: str, scope: Scope, receive: Receive, send: Send) -> None:
        received_at, started = datetime.now(UTC), time.perf_counter()
        request_chunks: list[bytes] = []
        answer_chunks: list[bytes] = []
        answer: dict[str, Any] = {}

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                request_chunks.append(message["body"])
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.update(status=message["status"], headers=message.get("headers", []))
            elif message["type"] == "http.response.body" and message.get("body"):
                answer_chunks.append(message["body"])
            await send(message)

        await self.app(scope, receiving, sending)
        if answer.get("status", _HTTP_ERROR) >= _HTTP_ERROR:
            return
        request_id = _value(answer["headers"], b"x-request-id") or _header(scope, b"x-request-id") or ""
        declared = _header(scope, b"inference-header-content-length")
        self.emitter.offer(Captured(
            style=style, request_id=request_id[:128] or "-", group_id=_header(scope, b"x-group-request-id"),
            received_at=received_at, completed_at=datetime.now(UTC), latency_s=time.perf_counter() - started,
            request_chunks=request_chunks, answer_chunks=answer_chunks,
            content_type=_header(scope, b"content-type") or "application/json",
            binary_header=int(declared) if declared and declared.isascii() and declared.isdigit() else None))

    def _lifespan_send(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.emitter.start()
            elif message["type"] == "lifespan.shutdown.complete":
                self.emitter.close()  # what is queued is printed before the process exits
            await send(message)
        return sending

    def _metrics_send(self, send: Send) -> Send:
        """The pod's exposition with the emitter's counters appended (its length header follows)."""
        return _appending(send, generate_latest(self.emitter.registry))


def _appending(send: Send, extra: bytes) -> Send:
    start: dict[str, Message] = {}

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            start["message"] = message
            return
        if message["type"] == "http.response.body" and not message.get("more_body"):
            head = start.pop("message", None)
            if head is not None:
                body = message.get("body", b"") + extra
                headers = [(k, v) for k, v in head.get("headers", []) if k.lower() != b"content-length"]
                await send({**head, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({**message, "body": body})
                return
        if "message" in start:
            await send(start.pop("message"))
        await send(message)
    return sending


def _header(scope: Scope, name: bytes) -> str | None:
    return _value(scope.get("headers", []), name)


def _value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
