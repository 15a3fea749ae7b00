"""Prediction records from one proxied exchange: the OIP request and answer bodies split into rows.

Pure: no I/O, no clock. A request of n rows becomes n records sharing the request id as their group id; a body
that is not an OIP tensor becomes no record at all (logging never fails a prediction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schemas.predictions import PredictionRecord


@dataclass(frozen=True)
class Exchange:
    """One successful prediction as the router saw it."""

    model: str
    version: str
    request_id: str
    group_id: str | None
    received_at: datetime
    completed_at: datetime
    latency_s: float
    request_body: bytes
    answer_body: bytes


def prediction_records(exchange: Exchange) -> list[PredictionRecord]:
    """One record per input row, with the matching output row and its predicted class."""
    try:
        rows = _rows(orjson.loads(exchange.request_body))
        outputs = _rows(orjson.loads(exchange.answer_body), key="outputs")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return []
    single = len(rows) == 1
    records = []
    for i, inputs in enumerate(rows):
        out = outputs[i] if i < len(outputs) else None
        records.append(PredictionRecord(
            request_id=exchange.request_id if single else f"{exchange.request_id}:{i}",
            group_request_id=exchange.group_id or (None if single else exchange.request_id),
            model=exchange.model, version=exchange.version, received_at=exchange.received_at,
            completed_at=exchange.completed_at, latency_ms=exchange.latency_s * 1000, inputs=inputs, outputs=out,
            predicted_class=int(max(range(len(out)), key=out.__getitem__)) if out else None))
    return records


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
