"""HTTP bodies ↔ ``InferenceRequest`` / results, for the OIP and TorchServe-style endpoints. Pure functions.

``/v2/.../infer`` takes OIP JSON. ``/predictions`` takes what TorchServe takes: JSON (an OIP body, an object keyed
by input name, or a list for the first input) or any other bytes (an image, text) handed to the handler as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request

from handlers.base import InferenceRequest, InferenceResult, Tensors
from handlers.tensors import NUMPY_DTYPES, BinarySection, bad_request, decode_inputs, decode_tensor, encode_output
from schemas.manifest import TensorSpec

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# OIP's binary tensor extension: the JSON header's length; the raw tensors follow it in the body.
BINARY_HEADER = "inference-header-content-length"


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refused (``body_too_large``) as soon as it is known to pass ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("invalid_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise bad_request("body_too_large", f"the body has {declared} bytes, the limit is {limit}",
                              limit=limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise bad_request("body_too_large", f"the body is larger than {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes | memoryview) -> Any:
    """The body as JSON, or ``BadRequest(invalid_json)`` saying where it broke."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise bad_request("invalid_json", f"the body is not valid JSON: {e}") from e


def _split_binary(body: bytes, headers: Mapping[str, str]) -> tuple[bytes | memoryview, BinarySection | None]:
    declared = headers.get(BINARY_HEADER)
    if declared is None:
        return body, None
    if not declared.isdigit() or int(declared) > len(body):
        raise bad_request("invalid_request", f"{BINARY_HEADER} {declared!r} does not fit the body")
    view = memoryview(body)
    return view[:int(declared)], BinarySection(view[int(declared):])


def decode_infer(body: bytes, *, specs: Sequence[TensorSpec] | None, request_id: str,
                 headers: Mapping[str, str]) -> InferenceRequest:
    """An OIP infer body as a request (JSON, or JSON + binary tensors); the body's ``id`` wins over the header's."""
    header, binary = _split_binary(body, headers)
    document = parse_json(header)
    inputs = decode_inputs(document, specs=specs, binary=binary)
    body_id = document.get("id")
    parameters = document.get("parameters")
    return InferenceRequest(id=body_id if isinstance(body_id, str) and body_id else request_id, inputs=inputs,
                            headers=headers, content_type="application/json",
                            parameters=parameters if isinstance(parameters, dict) else {})


def _tensors_from_json(document: Any, specs: Sequence[TensorSpec]) -> Tensors:
    if isinstance(document, dict):
        pairs = [(spec, document[spec.name]) for spec in specs if spec.name in document]
    elif isinstance(document, list) and specs:
        pairs = [(specs[0], document)]
    else:
        pairs = []
    tensors: Tensors = {}
    for spec, value in pairs:
        dtype = NUMPY_DTYPES[spec.datatype]
        try:
            # Numbers are converted once, here; decode_tensor then checks the array it is given.
            data = value if dtype.kind == "O" else np.asarray(value, dtype=dtype)
            shape = list(np.shape(data))
        except (ValueError, TypeError, OverflowError) as e:
            raise bad_request("data_mismatch", f"input {spec.name!r} is not a regular array of {spec.datatype}: "
                              f"{e}", input=spec.name) from e
        if len(shape) == len(spec.shape) - 1:
            shape = [1, *shape]  # one row sent without its batch dimension
        name, array = decode_tensor({"name": spec.name, "datatype": str(spec.datatype), "shape": shape,
                                     "data": data}, spec=spec)
        tensors[name] = array
    return tensors


def decode_predictions(body: bytes, *, content_type: str, specs: Sequence[TensorSpec] | None, request_id: str,
                       headers: Mapping[str, str]) -> InferenceRequest:
    """A TorchServe-style body as a request: JSON mapped onto the declared inputs when it fits, else raw bytes."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return InferenceRequest(id=request_id, raw=body, content_type=media_type, headers=headers)
    document = parse_json(body)
    if isinstance(document, dict) and "inputs" in document:
        return decode_infer(body, specs=specs, request_id=request_id, headers=headers)
    inputs = _tensors_from_json(document, specs) if specs is not None else {}
    return InferenceRequest(id=request_id, inputs=inputs, json_body=document, content_type=media_type,
                            headers=headers)


def result_outputs(result: InferenceResult) -> Tensors:
    """A result's tensors; a free-form payload becomes one ``output`` tensor (numeric, or JSON text as BYTES)."""
    if result.outputs or result.payload is None:
        return result.outputs
    try:
        array = np.asarray(result.payload)
    except ValueError:
        array = np.empty(0)
    if array.dtype.kind in "biuf" and array.size:
        return {"output": array}
    return {"output": np.array([orjson.dumps(result.payload).decode()], dtype=object)}


def infer_response(result: InferenceResult, *, model: str, version: str, request_id: str) -> bytes:
    """The OIP infer response body."""
    outputs = [encode_output(name, array) for name, array in result_outputs(result).items()]
    return orjson.dumps({"model_name": model, "model_version": version, "id": request_id, "outputs": outputs},
                        option=JSON_OPTIONS)


def predictions_response(result: InferenceResult) -> tuple[bytes, str]:
    """The ``/predictions`` body and its content type: the handler's payload as it is, else the named outputs."""
    payload = result.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload), result.content_type or "application/octet-stream"
    if isinstance(payload, str) and result.content_type and not result.content_type.endswith("json"):
        return payload.encode(), result.content_type
    if payload is None:
        payload = {name: array.tolist() for name, array in result.outputs.items()}
    return orjson.dumps(payload, option=JSON_OPTIONS), "application/json"
