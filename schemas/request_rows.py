"""Rows of numbers from the bodies the router forwards: OIP JSON, OIP binary tensors, TorchServe-style JSON.

Pure: no I/O. Every body is the client's, so a declared shape is believed only when it matches the values actually
sent (a tiny body claiming a million rows gives no rows), binary tensors are read only inside the bytes sent, and
never more than ``MAX_ROWS_PER_REQUEST`` rows come out. Anything that does not fit raises ``ValueError`` (or
``KeyError``/``TypeError``), which the caller turns into "no rows".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.manifest import Datatype, TensorSpec

#: Rows logged per request at most. Drift monitoring needs a sample, not every row of a bulk request; records are
#: built on the event loop and each one holds the prediction logger's bounded buffer (10,000 by default), so one
#: request must neither stall other requests nor crowd every other request's records out of the buffer.
MAX_ROWS_PER_REQUEST = 1_000

Rows = list[list[float]]

# OIP binary tensors are little-endian, as the pod reads them (handlers/tensors.py).
_DTYPES = {Datatype.BOOL: "|b1", Datatype.UINT8: "|u1", Datatype.UINT16: "<u2", Datatype.UINT32: "<u4",
           Datatype.UINT64: "<u8", Datatype.INT8: "|i1", Datatype.INT16: "<i2", Datatype.INT32: "<i4",
           Datatype.INT64: "<i8", Datatype.FP16: "<f2", Datatype.FP32: "<f4", Datatype.FP64: "<f8"}


def oip_rows(document: Any, *, key: str = "inputs", binary: bytes | None = None) -> Rows:
    """The first tensor of an OIP body as rows; its data in JSON, or in ``binary`` (the tail after the header)."""
    tensor = document[key][0]
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        flat = flatten(tensor["data"])
        return split_rows(flat, *_row_shape(tensor["shape"], len(flat)))
    if binary is None or type(size) is not int or not 0 < size <= len(binary):
        raise ValueError("binary_data_size does not fit the bytes sent")
    dtype = np.dtype(_DTYPES[Datatype(tensor["datatype"])])
    if size % dtype.itemsize:
        raise ValueError("binary_data_size is not a whole number of elements")
    n, width = _row_shape(tensor["shape"], size // dtype.itemsize)
    # Only the rows that will be logged are converted: a bulk request costs no more than MAX_ROWS_PER_REQUEST.
    kept = min(n, MAX_ROWS_PER_REQUEST)
    values = np.frombuffer(binary, dtype=dtype, count=kept * width).astype(np.float64).tolist()
    return split_rows(values, kept, width)


def torchserve_rows(document: Any, *, declared: tuple[TensorSpec, ...]) -> Rows:
    """A TorchServe-style JSON body (rows, one bare row, or an object keyed by input name) as rows of the model's
    first declared input, as the pod maps it; only numeric inputs give rows."""
    spec = declared[0] if declared else None
    if isinstance(document, dict):
        if spec is None or spec.name not in document:
            raise KeyError("no declared input in the body")
        data = document[spec.name]
    else:
        data = document
    if spec is not None and spec.datatype is Datatype.BYTES:
        raise TypeError("a BYTES input gives no numeric rows")
    if not isinstance(data, list) or not data:
        raise TypeError("not a list of numbers")
    flat = flatten(data)
    width = _declared_width(spec)
    if width is None:  # the nesting says: a list of lists is rows, a flat list one row
        width = len(flat) // len(data) if isinstance(data[0], list) else len(flat)
    if not width or len(flat) % width:
        raise ValueError("the values sent do not fill whole rows")
    return split_rows(flat, len(flat) // width, width)


def answer_rows(document: Any, *, rows: int) -> Rows:
    """Output rows of a ``/predictions`` answer: a list, or the first value of an object, split over ``rows``."""
    data = next(iter(document.values())) if isinstance(document, dict) else document
    flat = flatten(data)
    if not rows or not flat or len(flat) % rows:
        return []
    return split_rows(flat, rows, len(flat) // rows)


def flatten(data: Any) -> list[float]:
    """Nested lists of numbers as one flat list of floats (without recursion, so no depth limit to hit)."""
    flat: list[float] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(float(item))
    return flat


def split_rows(flat: list[float], n: int, width: int) -> Rows:
    """``flat`` cut into rows of ``width``, at most ``MAX_ROWS_PER_REQUEST`` of them."""
    return [flat[i * width:(i + 1) * width] for i in range(min(n, MAX_ROWS_PER_REQUEST))]


def _declared_width(spec: TensorSpec | None) -> int | None:
    """Values per row of a declared input, when every dimension after the batch one is fixed."""
    if spec is None or len(spec.shape) < 2 or any(d < 1 for d in spec.shape[1:]):
        return None
    return int(np.prod(spec.shape[1:]))


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
