"""Pure pieces of the pod, in-process: tensor decoding edge cases, binary tensors, tokenizer, error-status table,
the one-write HTTP transport."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from handlers.http_errors import http_status
from handlers.http_protocol import TurnWriter
from handlers.tokenizer import WordPieceTokenizer
from handlers.wire import BINARY_HEADER, decode_infer
from schemas.errors import BadRequest, NotFound, PermanentError, Reason, TemporaryError
from schemas.manifest import TensorSpec

SPECS = [TensorSpec(name="a", datatype="FP32", shape=[-1, 2]), TensorSpec(name="b", datatype="INT64", shape=[-1])]


def binary_request(header: dict, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A body in OIP's binary tensor extension and its header."""
    encoded = json.dumps(header).encode()
    return encoded + raw, {BINARY_HEADER: str(len(encoded))}


def test_missing_input_is_named():
    """A request without one of two declared inputs is refused with problem missing_input naming it."""
    body = json.dumps({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).encode()
    with pytest.raises(BadRequest) as caught:
        decode_infer(body, specs=SPECS, request_id="r", headers={})
    assert caught.value.details == {"problem": "missing_input", "inputs": ["b"]}


def test_binary_tensors_decode():
    """Binary tensor data (Inference-Header-Content-Length) decodes to the same arrays as JSON data."""
    a = np.arange(4, dtype=np.float32)
    b = np.array([7, 8], dtype=np.int64)
    header = {"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": a.nbytes}},
        {"name": "b", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": b.nbytes}}]}
    body, headers = binary_request(header, a.tobytes() + b.tobytes())
    request = decode_infer(body, specs=SPECS, request_id="r", headers=headers)
    assert request.inputs["a"].tolist() == [[0, 1], [2, 3]] and request.inputs["b"].tolist() == [7, 8]


def test_binary_tensor_shorter_than_declared():
    """A binary section shorter than binary_data_size is refused as data_mismatch."""
    header = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
                         {"name": "b", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    body, headers = binary_request(header, b"\0" * 12)
    with pytest.raises(BadRequest) as caught:
        decode_infer(body, specs=SPECS, request_id="r", headers=headers)
    assert caught.value.details["problem"] == "data_mismatch"


def test_wordpiece_tokenizer(tmp_path):
    """The vocab.txt tokenizer lower-cases, splits punctuation, cuts word pieces and wraps in [CLS]/[SEP]."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "##ing", "!", "go"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = WordPieceTokenizer.from_file(tmp_path / "vocab.txt", max_len=8)
    assert tokenizer.encode("Playing GO! zzz") == [2, 4, 5, 7, 6, 1, 3]
    assert len(tokenizer.encode("go " * 50)) == 8


@pytest.mark.parametrize(("error", "status"), [
    (BadRequest("x"), 400),
    (NotFound("x", reason=Reason.MODEL_NOT_FOUND), 404),
    (TemporaryError("x", reason=Reason.QUEUE_FULL), 429),
    (TemporaryError("x", reason=Reason.REQUEST_TIMEOUT), 504),
    (PermanentError("x", reason=Reason.HANDLER_ERROR), 500),
    (TemporaryError("x", reason=Reason.OBJECT_CHANGED), 503),
])
def test_error_status_table(error, status):
    """One table maps every serving error to its HTTP status, falling back to the error's class."""
    assert http_status(error) == status


class RecordingTransport:
    """A transport that records each write (as the socket would see it) and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_writes_of_one_loop_turn_leave_as_one_write():
    """A response's head and body written in one turn of the event loop reach the socket as one write, in order."""
    transport = RecordingTransport()

    async def respond() -> None:
        writer = TurnWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writer.write(b"body")
        assert transport.writes == []
        await asyncio.sleep(0)
        writer.write(b"next")
        writer.close()

    asyncio.run(respond())
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next"] and transport.closed
