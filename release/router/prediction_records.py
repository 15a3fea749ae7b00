"""Prediction records from one proxied exchange: the OIP request and answer bodies split into rows.

Pure: no I/O, no clock. A request of n rows becomes n records sharing the request id as their group id; a body
that is not an OIP tensor becomes no record at all (logging never fails a prediction).

The body is the client's: its declared ``shape`` is believed only when it matches the values actually sent, so
rows are bounded by the data in the body (a tiny body claiming a million rows gives no record), and never more
than ``MAX_ROWS_PER_REQUEST`` of them are logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schemas.predictions import PredictionRecord

#: Rows logged per request at most. Drift monitoring needs a sample, not every row of a bulk request; records are
#: built on the event loop and each one holds the prediction logger's bounded buffer (10,000 by default), so one
#: request must neither stall other requests nor crowd every other request's records out of the buffer.
MAX_ROWS_PER_REQUEST = 1_000


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
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, OverflowError):
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
    """The first tensor of an OIP body split into rows of floats, at most ``MAX_ROWS_PER_REQUEST`` of them."""
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
    n, width = _row_shape(tensor["shape"], len(flat))
    return [flat[i * width:(i + 1) * width] for i in range(min(n, MAX_ROWS_PER_REQUEST))]


def _row_shape(shape: Any, values: int) -> tuple[int, int]:
    """(rows, values per row) of a tensor holding ``values`` values, when its declared ``shape`` says exactly that.

    A shape the data does not fill (or overfills) is a claim, not a tensor: no rows. So is an empty tensor.
    """
    if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape):
        raise ValueError(f"not an OIP shape of a non-empty tensor: {str(shape)[:64]}")
    if _product_up_to(shape, values) != values:
        raise ValueError(f"the shape does not hold the {values} values sent")
    if len(shape) < 2:  # a vector or a scalar is one row
        return 1, values
    return shape[0], values // shape[0]


def _product_up_to(dims: list[int], bound: int) -> int:
    """The product of ``dims``, or ``bound + 1`` once it passes ``bound`` (claimed dims never make a huge number)."""
    product = 1
    for dim in dims:
        product *= dim
        if product > bound:
            return bound + 1
    return product
