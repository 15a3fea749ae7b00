"""Prediction records from one proxied exchange: the request and answer bodies split into rows.

Pure: no I/O, no clock. A request of n rows becomes n records sharing the request id as their group id. The rows
come from every body a pod takes (``request_rows``): OIP JSON and OIP binary tensors on ``/v2/.../infer``;
TorchServe-style JSON on ``/predictions`` and ``/predict``, mapped onto the model's first declared input. A
``/predictions`` body that gives no numbers (an image, text) becomes one record of its size and sha256 only; an
OIP body that gives no rows becomes no record at all (logging never fails a prediction).

Rows are bounded by the data actually sent and never more than ``MAX_ROWS_PER_REQUEST`` of them are logged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from schemas.manifest import TensorSpec
from schemas.predictions import PredictionRecord
from schemas.request_rows import MAX_ROWS_PER_REQUEST, Rows, answer_rows, oip_rows, torchserve_rows

__all__ = ["MAX_ROWS_PER_REQUEST", "Exchange", "prediction_records"]

_UNREADABLE = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, OverflowError, StopIteration)


@dataclass(frozen=True)
class Exchange:
    """One successful prediction as the router saw it.

    ``style`` is the pod endpoint it went to (``v2``: OIP infer, ``ts``: ``/predictions``); ``binary_header``
    the request's ``Inference-Header-Content-Length`` (OIP binary tensors); ``declared`` the model's inputs.
    """

    model: str
    version: str
    request_id: str
    group_id: str | None
    received_at: datetime
    completed_at: datetime
    latency_s: float
    request_body: bytes
    answer_body: bytes
    style: Literal["v2", "ts"] = "v2"
    content_type: str = "application/json"
    binary_header: int | None = None
    declared: tuple[TensorSpec, ...] = ()


def prediction_records(exchange: Exchange) -> list[PredictionRecord]:
    """One record per input row, with the matching output row and its predicted class."""
    if exchange.style == "v2":
        return _records(exchange, _oip_request_rows(exchange), _oip_answer_rows(exchange.answer_body))
    try:
        rows = _torchserve_request_rows(exchange)
    except _UNREADABLE:
        rows = []
    if not rows:  # not numbers the model declares: what was sent, without its content
        outputs = _answer(exchange, 1)
        return [_record(exchange, 0, single=True, inputs=None, out=outputs[0] if outputs else None,
                        raw=exchange.request_body)]
    return _records(exchange, rows, _answer(exchange, len(rows)))


def _oip_request_rows(exchange: Exchange) -> Rows:
    body, header = exchange.request_body, exchange.binary_header
    try:
        if header is None:
            return oip_rows(orjson.loads(body))
        if not 0 < header <= len(body):
            return []
        return oip_rows(orjson.loads(body[:header]), binary=body[header:])
    except _UNREADABLE:
        return []


def _oip_answer_rows(body: bytes) -> Rows:
    try:
        return oip_rows(orjson.loads(body), key="outputs")
    except _UNREADABLE:
        return []


def _torchserve_request_rows(exchange: Exchange) -> Rows:
    media_type = exchange.content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return []
    document = orjson.loads(exchange.request_body)
    if isinstance(document, dict) and "inputs" in document:  # the pod takes a full OIP body here too
        return oip_rows(document)
    return torchserve_rows(document, declared=exchange.declared)


def _answer(exchange: Exchange, rows: int) -> Rows:
    """Output rows of a ``/predictions`` answer (an OIP answer when the request was one); ``[]`` when unreadable."""
    try:
        document = orjson.loads(exchange.answer_body)
        if isinstance(document, dict) and "outputs" in document:
            return oip_rows(document, key="outputs")
        return answer_rows(document, rows=rows)
    except _UNREADABLE:
        return []


def _records(exchange: Exchange, rows: Rows, outputs: Rows) -> list[PredictionRecord]:
    single = len(rows) == 1
    return [_record(exchange, i, single=single, inputs=inputs, out=outputs[i] if i < len(outputs) else None)
            for i, inputs in enumerate(rows)]


def _record(exchange: Exchange, i: int, *, single: bool, inputs: list[float] | None, out: list[float] | None,
            raw: bytes | None = None) -> PredictionRecord:
    extra: dict[str, Any] = {}
    if raw is not None:
        extra = {"input_size": len(raw), "input_sha256": hashlib.sha256(raw).hexdigest()}
    return PredictionRecord(
        request_id=exchange.request_id if single else f"{exchange.request_id}:{i}",
        group_request_id=exchange.group_id or (None if single else exchange.request_id),
        model=exchange.model, version=exchange.version, received_at=exchange.received_at,
        completed_at=exchange.completed_at, latency_ms=exchange.latency_s * 1000, inputs=inputs, outputs=out,
        predicted_class=int(max(range(len(out)), key=out.__getitem__)) if out else None, **extra)
