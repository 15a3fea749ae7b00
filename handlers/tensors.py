"""Open Inference Protocol v2 tensors <-> numpy, with every way a client can get them wrong named.

Decoding checks a request against the model's declared inputs (names, datatypes, shapes, element counts) and
raises ``BadRequest`` whose ``details.problem`` is a stable code: ``invalid_json``, ``invalid_request``,
``unknown_input``, ``missing_input``, ``duplicate_input``, ``datatype_mismatch``, ``shape_mismatch``,
``data_mismatch``. Encoding turns numpy outputs into OIP output objects (orjson serialises the arrays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from schemas.errors import BadRequest
from schemas.manifest import Datatype, TensorSpec

NUMPY_DTYPES: Mapping[str, np.dtype[Any]] = {
    Datatype.BOOL: np.dtype(np.bool_), Datatype.UINT8: np.dtype(np.uint8), Datatype.UINT16: np.dtype(np.uint16),
    Datatype.UINT32: np.dtype(np.uint32), Datatype.UINT64: np.dtype(np.uint64), Datatype.INT8: np.dtype(np.int8),
    Datatype.INT16: np.dtype(np.int16), Datatype.INT32: np.dtype(np.int32), Datatype.INT64: np.dtype(np.int64),
    Datatype.FP16: np.dtype(np.float16), Datatype.FP32: np.dtype(np.float32), Datatype.FP64: np.dtype(np.float64),
    Datatype.BYTES: np.dtype(object),
}
# Keyed by the dtype itself: naming a dtype (``str``) costs more than the rest of encoding a small output.
_DATATYPES_BY_DTYPE: Mapping[np.dtype[Any], str] = {dtype: name for name, dtype in NUMPY_DTYPES.items()}


def bad_request(problem: str, message: str, **details: Any) -> BadRequest:
    """A ``BadRequest`` whose ``details.problem`` names what was wrong."""
    return BadRequest(message, details={"problem": problem, **details})


#: Numpy's own limit is 64 dimensions; no model input needs more than a handful.
MAX_DIMENSIONS = 32
#: One input's element count, whatever the data: a claimed shape is checked against this before anything is
#: allocated or reshaped (2**31 elements is 8 GiB of FP32, more than any request body the pod accepts).
MAX_ELEMENTS = 1 << 31


def _shape(value: Any, *, name: str) -> list[int]:
    """A shape of at most ``MAX_DIMENSIONS`` positive sizes whose product is at most ``MAX_ELEMENTS``. A manifest
    cannot declare a 0-sized dimension (``TensorSpec``), so none is accepted: a zero-size tensor with huge
    dimensions is refused before anything is reshaped."""
    if (not isinstance(value, list) or len(value) > MAX_DIMENSIONS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)):
        raise bad_request("invalid_request", f"input {name!r}: shape must be a list of at most {MAX_DIMENSIONS} "
                          "positive integers", input=name)
    elements = 1
    for d in value:
        elements *= d
        if elements > MAX_ELEMENTS:
            raise bad_request("invalid_request", f"input {name!r}: shape {value} has more than {MAX_ELEMENTS} "
                              "elements", input=name)
    return value


def _check_shape(shape: list[int], spec: TensorSpec) -> None:
    fits = len(shape) == len(spec.shape) and all(want in (-1, got) for want, got in zip(spec.shape, shape,
                                                                                          strict=True))
    if not fits:
        raise bad_request("shape_mismatch", f"input {spec.name!r} has shape {shape}, the model takes {spec.shape} "
                          "(-1 = any size)", input=spec.name, expected=spec.shape, got=shape)


class BinarySection:
    """The raw tail of a request using OIP's binary tensor extension, consumed input by input in order."""

    def __init__(self, data: memoryview):
        self.data = data
        self.offset = 0

    def take(self, size: int, *, name: str) -> memoryview:
        """The next ``size`` bytes, or ``BadRequest`` when the body is shorter than the header says."""
        if size < 0 or self.offset + size > len(self.data):
            raise bad_request("data_mismatch", f"input {name!r}: binary_data_size {size} runs past the body",
                              input=name)
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk


def _binary_array(item: dict[str, Any], *, datatype: str, binary: BinarySection | None,
                  name: str) -> np.ndarray[Any, Any] | None:
    parameters = item.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        return None
    if binary is None or not isinstance(size, int) or datatype == Datatype.BYTES:
        raise bad_request("invalid_request", f"input {name!r}: binary_data_size needs a numeric datatype and the "
                          "Inference-Header-Content-Length header", input=name)
    chunk = binary.take(size, name=name)
    if size % NUMPY_DTYPES[datatype].itemsize:
        raise bad_request("data_mismatch", f"input {name!r}: {size} bytes is not a whole number of {datatype}",
                          input=name)
    return np.frombuffer(chunk, dtype=NUMPY_DTYPES[datatype])


def decode_tensor(item: Any, *, spec: TensorSpec | None,
                  binary: BinarySection | None = None) -> tuple[str, np.ndarray[Any, Any]]:
    """One OIP input object as ``(name, array)``, checked against ``spec`` when the model declares one."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise bad_request("invalid_request", "each input must be an object with a string 'name'")
    name: str = item["name"]
    datatype = str(item.get("datatype"))
    if datatype not in NUMPY_DTYPES:
        raise bad_request("datatype_mismatch", f"input {name!r}: datatype {datatype!r} is not an OIP datatype",
                          input=name)
    if spec is not None and datatype != spec.datatype:
        raise bad_request("datatype_mismatch", f"input {name!r} has datatype {datatype}, the model takes "
                          f"{spec.datatype}", input=name, expected=str(spec.datatype), got=datatype)
    shape = _shape(item.get("shape"), name=name)
    if spec is not None:
        _check_shape(shape, spec)
    array = _binary_array(item, datatype=datatype, binary=binary, name=name)
    if array is None:
        if "data" not in item:
            raise bad_request("invalid_request", f"input {name!r} has no 'data'", input=name)
        try:
            array = np.asarray(item["data"], dtype=NUMPY_DTYPES[datatype])
        except (ValueError, TypeError, OverflowError) as e:
            raise bad_request("data_mismatch", f"input {name!r}: data is not a regular array of {datatype}: {e}",
                              input=name) from e
    if datatype == Datatype.BYTES and not all(isinstance(v, str | bytes) for v in array.flat):
        raise bad_request("data_mismatch", f"input {name!r}: BYTES data must be strings", input=name)
    if array.size != math.prod(shape):
        raise bad_request("data_mismatch", f"input {name!r}: shape {shape} needs {math.prod(shape)} elements, "
                          f"data has {array.size}", input=name)
    return name, array.reshape(shape)


def decode_inputs(document: Any, *, specs: Sequence[TensorSpec] | None,
                  binary: BinarySection | None = None) -> dict[str, np.ndarray[Any, Any]]:
    """The ``inputs`` of an OIP infer request body, validated against the model's declared inputs."""
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise bad_request("invalid_request", "the body must be an object with a non-empty 'inputs' list")
    by_name = {spec.name: spec for spec in specs} if specs is not None else None
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for item in document["inputs"]:
        item_name = item.get("name") if isinstance(item, dict) else None
        if by_name is not None and isinstance(item_name, str) and item_name not in by_name:
            raise bad_request("unknown_input", f"the model has no input {item_name!r}; it takes "
                              f"{sorted(by_name)}", input=item_name)
        name, array = decode_tensor(item, spec=by_name[item_name] if by_name and item_name else None,
                                    binary=binary)
        if name in tensors:
            raise bad_request("duplicate_input", f"input {name!r} is given twice", input=name)
        tensors[name] = array
    missing = sorted(set(by_name or ()) - set(tensors))
    if missing:
        raise bad_request("missing_input", f"missing input(s) {missing}", inputs=missing)
    return tensors


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The OIP datatype name for a numpy array (BYTES for strings and objects)."""
    return _DATATYPES_BY_DTYPE.get(array.dtype, Datatype.BYTES)


def encode_output(name: str, array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """One OIP output object. Numeric data stays a numpy array: orjson writes it without a Python list."""
    datatype = datatype_of(array)
    if datatype == Datatype.BYTES:
        data: Any = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]
    elif array.dtype == np.float16:
        data = array.astype(np.float32).ravel()
    else:
        data = np.ascontiguousarray(array).ravel()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
