"""Every request kind a pod takes reaches it through the router and, when it succeeds, the prediction log."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy.engine import Engine

from release import registry
from release.db import session_scope
from release.router import PredictionLogger
from schemas.manifest import TensorSpec
from schemas.prediction_records import MAX_ROWS_PER_REQUEST, Exchange, prediction_records
from tests.handlers.pod_testkit import Pod
from tests.release.router_testkit import MODEL, Harness, RecordingBus, move_alias

DECLARED = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]}
ANSWER = orjson.dumps({"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.2, 0.8]}]})


def binary_request(rows: np.ndarray, *, claimed_size: int | None = None) -> tuple[bytes, dict[str, str]]:
    """An OIP request carrying ``rows`` as a binary FP32 tensor, and its headers."""
    data = rows.astype("<f4").tobytes()
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                       "parameters": {"binary_data_size": claimed_size or len(data)}}]})
    return header + data, {"Inference-Header-Content-Length": str(len(header)),
                           "Content-Type": "application/octet-stream"}


def _router_to(engine: Engine, pod: Pod, serve_router: Callable[..., Harness]) -> tuple[Harness, RecordingBus,
                                                                                         PredictionLogger]:
    with session_scope(engine) as s:
        view = registry.register_version(s, model=MODEL, version="1", digest="sha256:1", format="torchscript",
                                         artifact_uri=f"file:///b/models/{MODEL}/1/", manifest=DECLARED,
                                         policy={}).version
        registry.record_deployment(s, version_id=view.id, backend="local", status="ready", endpoints=[pod.url])
    move_alias(engine, "PROD", "1")
    bus = RecordingBus()
    logger = PredictionLogger(engine=engine, bus=bus)
    return serve_router(logger=logger), bus, logger


def test_binary_oip_request_is_served_and_logged(sqlite_engine: Engine, real_pod: Pod,
                                                 serve_router: Callable[..., Harness]) -> None:
    """A binary-tensor OIP request answers 200 through the router, and its rows are recorded."""
    h, bus, logger = _router_to(sqlite_engine, real_pod, serve_router)
    rows = np.random.default_rng(1).random((3, 64)).astype(np.float32)
    body, headers = binary_request(rows)

    response = h.client.post(f"/v2/models/{MODEL}/infer", content=body, headers={**headers, "X-Request-ID": "b1"})
    logger.flush()

    assert response.status_code == 200, response.text
    records = bus.records()
    assert [r["request_id"] for r in records] == ["b1:0", "b1:1", "b1:2"]
    assert np.allclose([r["inputs"] for r in records], rows)
    assert all(len(r["outputs"]) == 10 and r["predicted_class"] is not None for r in records)


def test_predictions_and_predict_bodies_are_logged(sqlite_engine: Engine, real_pod: Pod,
                                                   serve_router: Callable[..., Harness]) -> None:
    """TorchServe-style bodies (rows, one bare row, rows by input name) on /predictions and /predict are logged."""
    h, bus, logger = _router_to(sqlite_engine, real_pod, serve_router)
    rows = np.random.default_rng(2).random((2, 64)).astype(np.float32)
    sent: list[tuple[str, Any]] = [(f"/predictions/{MODEL}", rows.tolist()), (f"/predict/{MODEL}", rows[0].tolist()),
                                   (f"/predictions/{MODEL}/PROD", {"input": rows.tolist()})]
    for path, body in sent:
        response = h.client.post(path, json=body)
        assert response.status_code == 200, (path, response.text)
    logger.flush()

    inputs = [r["inputs"] for r in bus.records()]
    assert np.allclose(inputs, [rows[0], rows[1], rows[0], rows[0], rows[1]])
    assert all(r["predicted_class"] is not None for r in bus.records())


def _exchange(body: bytes, **fields: Any) -> Exchange:
    now = datetime.now(UTC)
    return Exchange(model=MODEL, version="1", request_id="req", group_id=None, received_at=now, completed_at=now,
                    latency_s=0.001, request_body=body, answer_body=ANSWER, **fields)


def test_binary_tensors_are_believed_only_within_the_bytes_sent() -> None:
    """A binary_data_size past the body, a header length past it, or a lying shape give no record."""
    rows = np.ones((2, 4), dtype=np.float32)
    body, headers = binary_request(rows, claimed_size=64)
    header = int(headers["Inference-Header-Content-Length"])
    assert prediction_records(_exchange(body, binary_header=header)) == []
    assert prediction_records(_exchange(body, binary_header=len(body) + 1)) == []
    lying = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1000, 4],
                                      "parameters": {"binary_data_size": 32}}]})
    assert prediction_records(_exchange(lying + rows.tobytes(), binary_header=len(lying))) == []


def test_binary_rows_are_capped() -> None:
    """A truthful bulk binary request logs its first MAX_ROWS_PER_REQUEST rows only."""
    rows = np.arange(MAX_ROWS_PER_REQUEST + 10, dtype=np.float32).reshape(-1, 1)
    body, headers = binary_request(rows)
    records = prediction_records(_exchange(body, binary_header=int(headers["Inference-Header-Content-Length"])))
    assert len(records) == MAX_ROWS_PER_REQUEST
    assert records[-1].inputs == [float(MAX_ROWS_PER_REQUEST - 1)]


def test_raw_predictions_bodies_are_recorded_by_size_and_digest_only() -> None:
    """An image sent to /predictions is one record of its size and sha256, never its bytes."""
    raw = b"\x89PNG" + bytes(range(256))
    [record] = prediction_records(_exchange(raw, style="ts", content_type="image/png"))
    assert record.inputs is None
    assert (record.input_size, record.input_sha256) == (len(raw), hashlib.sha256(raw).hexdigest())


def test_bytes_inputs_are_not_read_as_numbers() -> None:
    """A /predictions body for a BYTES input is recorded by size and digest, not parsed."""
    declared = (TensorSpec(name="text", datatype="BYTES", shape=[-1]),)
    [record] = prediction_records(_exchange(b'["12", "34"]', style="ts", declared=declared))
    assert record.inputs is None and record.input_size == 12
