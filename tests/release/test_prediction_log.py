"""Prediction logging: which predictions are logged, as which records, and how they are published.

Publishing is off the request path: a stuck publisher or a full buffer never delays or fails a prediction. The
tests show it by order of events (offers return while a publish is held), never by measuring time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from release.db import session_scope
from release.router.metrics import RouterMetrics
from release.router.prediction_log import PredictionLogger
from schemas.prediction_records import MAX_ROWS_PER_REQUEST, Exchange, prediction_records
from tests.handlers.pod_testkit import Pod
from tests.release.router_testkit import MODEL, Harness, RecordingBus, Upstream, add_version, move_alias, record


def _exchange(request: object, answer: object) -> Exchange:
    now = datetime.now(UTC)
    return Exchange(model=MODEL, version="1", request_id="req", group_id=None, received_at=now, completed_at=now,
                    latency_s=0.002, request_body=orjson.dumps(request), answer_body=orjson.dumps(answer))


# ---------------------------------------------------------------------------------------------- records
def test_each_row_of_a_nested_tensor_is_one_record() -> None:
    """A 2-row request (nested lists) gives 2 records with their inputs, outputs and predicted class."""
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}]}
    answer = {"outputs": [{"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [0.1, 0.9, 0.8, 0.2]}]}
    records = prediction_records(_exchange(request, answer))
    assert [(r.request_id, r.group_request_id) for r in records] == [("req:0", "req"), ("req:1", "req")]
    assert [r.inputs for r in records] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert [r.predicted_class for r in records] == [1, 0]
    assert all(r.latency_ms == 2.0 for r in records)


def test_a_body_that_is_not_an_oip_tensor_gives_no_record() -> None:
    """Requests the router cannot read as OIP tensors are served but not logged."""
    assert prediction_records(_exchange({"instances": [[1, 2]]}, {"predictions": [0]})) == []


def _tensor(shape: object, data: list[object], key: str = "inputs") -> dict[str, object]:
    return {key: [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]}


ONE_OUTPUT = _tensor([1, 2], [0.3, 0.7], key="outputs")


@pytest.mark.parametrize("shape", [[1_000_000, 1], [3, 1_000_000], [2], [0, 3], [-3, -1], [3.0, 1], [True, 3],
                                   "3", [2**40, 2**40, 2**40]])
def test_a_shape_the_data_does_not_fill_gives_no_record(shape: object) -> None:
    """A declared shape is believed only when it holds exactly the values sent: otherwise nothing is logged."""
    assert prediction_records(_exchange(_tensor(shape, [0.5, 0.25, 1.0]), ONE_OUTPUT)) == []


def test_vectors_and_scalars_are_one_row() -> None:
    """A 1-d tensor (or a scalar) is one row of all its values."""
    assert [r.inputs for r in prediction_records(_exchange(_tensor([3], [1, 2, 3]), ONE_OUTPUT))] == [[1.0, 2.0, 3.0]]
    assert [r.inputs for r in prediction_records(_exchange(_tensor([], [7]), ONE_OUTPUT))] == [[7.0]]


def test_rows_per_request_are_capped() -> None:
    """A truthful bulk request logs its first MAX_ROWS_PER_REQUEST rows only."""
    rows = MAX_ROWS_PER_REQUEST + 500
    records = prediction_records(_exchange(_tensor([rows, 1], list(range(rows))), ONE_OUTPUT))
    assert len(records) == MAX_ROWS_PER_REQUEST
    assert records[-1].inputs == [float(MAX_ROWS_PER_REQUEST - 1)]


# ---------------------------------------------------------------------------------------------- sampling
def test_predictions_are_sampled_at_the_policy_rate(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                    serve_router: Callable[..., Harness]) -> None:
    """With drift.sample_rate 0.25 about a quarter of successful predictions are logged, with their ids."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url], policy={"drift": {"sample_rate": 0.25}})
    move_alias(sqlite_engine, "PROD", "1")
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus)
    h = serve_router(seed=3, logger=logger)
    n = 200
    ids = {h.infer().headers["x-request-id"] for _ in range(n)}
    logger.flush()
    records = bus.records()
    assert abs(len(records) - 0.25 * n) < 4 * (n * 0.25 * 0.75) ** 0.5
    assert {r["request_id"] for r in records} <= ids
    assert all(r["model"] == MODEL and r["version"] == "1" and r["predicted_class"] == 1 for r in records)


def test_failed_predictions_are_not_logged(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                           serve_router: Callable[..., Harness]) -> None:
    """An upstream error is passed on but never logged as a prediction."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["broken"].url])
    move_alias(sqlite_engine, "PROD", "1")
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus)
    h = serve_router(logger=logger)
    assert h.infer().status_code == 500
    logger.flush()
    assert bus.records() == []


def test_batched_request_logs_one_record_per_row_with_group_id(sqlite_engine: Engine, real_pod: Pod,
                                                               serve_router: Callable[..., Harness]) -> None:
    """A 3-row request to a real pod is logged as 3 records sharing the request id as their group id."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [real_pod.url])
    move_alias(sqlite_engine, "PROD", "1")
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus)
    h = serve_router(logger=logger)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": [0.25] * 192}]}
    response = h.client.post(f"/v2/models/{MODEL}/infer", json=body, headers={"X-Request-ID": "batch-1"})
    assert response.status_code == 200
    logger.flush()
    records = bus.records()
    assert [r["request_id"] for r in records] == ["batch-1:0", "batch-1:1", "batch-1:2"]
    assert {r["group_request_id"] for r in records} == {"batch-1"}
    assert all(len(r["inputs"]) == 64 and len(r["outputs"]) == 10 for r in records)


# ---------------------------------------------------------------------------------------------- publishing
def test_logger_publishes_in_batches_per_model(sqlite_engine: Engine) -> None:
    """1,200 records of two models with batch 500 become one event per model and chunk, nothing lost."""
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus, batch=500)
    for i in range(1200):
        logger.offer(record(i, model="a" if i % 3 else "b"))
    logger.flush()
    sizes = [len(e.data["records"]) for e in bus.events]
    assert sum(sizes) == 1200 and logger.published == 1200
    assert max(sizes) <= 500 and len(bus.events) == 6  # 3 chunks, each split into models a and b
    assert all(len({r["model"] for r in e.data["records"]}) == 1 for e in bus.events)


def test_offers_never_wait_for_a_stuck_publisher_and_drops_are_counted(sqlite_engine: Engine) -> None:
    """With the publisher held inside publish, 1,000 offers all return; records past capacity are dropped, counted."""
    metrics = RouterMetrics(CollectorRegistry())
    hold = threading.Event()
    bus = RecordingBus(hold=hold)
    logger = PredictionLogger(engine=sqlite_engine, bus=bus, capacity=50, batch=10, interval_s=0.01,
                              dropped=metrics.dropped)
    logger.start()
    try:
        logger.offer(record(0))
        assert bus.entered.wait(timeout=5)  # the background publisher is now blocked inside publish
        for i in range(1, 1001):
            logger.offer(record(i))
        # Every offer returned while the publish is still held: none of them waited for the publisher.
        assert bus.events == []
    finally:
        hold.set()
        logger.close()
    dropped = metrics.registry.get_sample_value("router_prediction_logs_dropped_total") or 0
    assert dropped == 1001 - 50 - 1  # one record was taken by the stuck publish, 50 fit the buffer
    assert logger.published == 51 and len(bus.records()) == 51


def test_full_log_buffer_never_fails_a_prediction(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                  serve_router: Callable[..., Harness]) -> None:
    """With a tiny, never-flushed buffer predictions still succeed and the drops show in /metrics."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
    move_alias(sqlite_engine, "PROD", "1")
    metrics = RouterMetrics(CollectorRegistry())
    logger = PredictionLogger(engine=sqlite_engine, bus=RecordingBus(), capacity=5, dropped=metrics.dropped)
    h = serve_router(logger=logger, metrics=metrics)
    assert all(h.infer().status_code == 200 for _ in range(20))
    assert h.sample("router_prediction_logs_dropped_total") == 15
    exposition = h.client.get("/metrics").text
    assert "router_prediction_logs_dropped_total 15.0" in exposition
    assert 'router_requests_total{code="200",model="digits",version="1"} 20.0' in exposition
