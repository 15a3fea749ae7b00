"""Pods record predictions themselves when asked: sampled, batched, off the request path, never failing a request."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from pod_testkit import Artifacts, Digits, Pod, eventually, infer_body, metric_samples
from prometheus_client import CollectorRegistry
from test_pod_handoff import binary_body

from handlers.prediction_emitter import Captured, PredictionEmitter
from handlers.settings import parse_settings
from schemas.manifest import TensorSpec
from schemas.pod_records import POD_RECORDS_KIND, RECORDED_BY_HEADER, PodRecordsLine

DECLARED = (TensorSpec.model_validate({"name": "input", "datatype": "FP32", "shape": [-1, 4]}),)


def captured(rows: int = 1, *, width: int = 4, request_id: str = "r") -> Captured:
    """One OIP JSON exchange of ``rows`` rows of ``width`` values, answered with two outputs per row."""
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, width],
                           "data": [0.5] * (rows * width)}]}
    outputs = {"outputs": [{"name": "p", "datatype": "FP32", "shape": [rows, 2], "data": [0.1, 0.9] * rows}]}
    now = datetime.now(UTC)
    return Captured(style="v2", request_id=request_id, group_id=None, received_at=now, completed_at=now,
                    latency_s=0.001, request_chunks=[json.dumps(request).encode()],
                    answer_chunks=[json.dumps(outputs).encode()],
                    content_type="application/json", binary_header=None)


def emitter(lines: list[bytes], **kwargs: object) -> PredictionEmitter:
    """An emitter of model ``m`` version ``1`` printing into ``lines``."""
    options: dict[str, object] = {"sample_rate": 1.0, "rng": random.Random(7), "write": lines.append, **kwargs}
    return PredictionEmitter(model="m", version="1", declared=DECLARED, registry=CollectorRegistry(),
                             **options)  # type: ignore[arg-type]


def dropped(e: PredictionEmitter, reason: str) -> float:
    """The emitter's drop count for ``reason``."""
    return e.registry.get_sample_value("pod_prediction_records_dropped_total", {"reason": reason}) or 0.0


def parsed(lines: list[bytes]) -> list[PodRecordsLine]:
    """Every printed line, validated as the monitor validates it."""
    return [PodRecordsLine.model_validate_json(line) for line in lines]


# ------------------------------------------------------------------------------------------ the emitter
def test_sampling_follows_the_drift_sample_rate() -> None:
    """A rate of 0 records nothing, 1 everything, 0.25 about a quarter of the requests."""
    assert not any(emitter([], sample_rate=0.0).sampled() for _ in range(1000))
    assert all(emitter([], sample_rate=1.0).sampled() for _ in range(1000))
    quarter = emitter([], sample_rate=0.25)
    assert 800 < sum(quarter.sampled() for _ in range(4000)) < 1200


def test_records_are_batched_into_bounded_lines_of_the_served_version() -> None:
    """Queued exchanges become one record per row, packed into lines no longer than the limit."""
    lines: list[bytes] = []
    e = emitter(lines, max_line_bytes=2000)
    for i in range(20):
        e.offer(captured(rows=2, request_id=f"req-{i}"))
    assert e.flush() == 40
    batches = parsed(lines)
    assert len(batches) > 1 and all(len(line) <= 2000 for line in lines)
    records = [r for batch in batches for r in batch.records]
    assert [r.request_id for r in records[:2]] == ["req-0:0", "req-0:1"]
    assert {(r.model, r.version) for r in records} == {("m", "1")}
    assert records[0].inputs == [0.5] * 4 and records[0].predicted_class == 1
    assert all(json.loads(line)["kind"] == POD_RECORDS_KIND for line in lines)


def test_a_busy_pod_prints_before_the_interval_ends() -> None:
    """Once a quarter of the queue is used the printer wakes, so a busy pod does not fill it between intervals."""
    printed = threading.Event()
    e = emitter([], write=lambda _line: printed.set(), capacity=8, interval_s=3600)
    e.start()
    try:
        e.offer(captured(request_id="first"))
        assert not printed.wait(0.2)  # one record waits for the interval (an hour here)
        e.offer(captured(request_id="second"))  # 2 of 8: the printer wakes now
        assert printed.wait(30)
    finally:
        e.close()


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    """Past the queue's capacity an offer returns at once and the exchange is counted as dropped."""
    lines: list[bytes] = []
    e = emitter(lines, capacity=2)
    for i in range(5):
        e.offer(captured(request_id=f"r{i}"))
    assert dropped(e, "queue_full") == 3
    assert e.flush() == 2


def test_failures_after_the_answer_are_counted_never_raised() -> None:
    """An unreadable exchange, a record too large for a line and a failing stdout are dropped and counted."""
    def broken(_line: bytes) -> None:
        raise BrokenPipeError("stdout closed")

    e = emitter([], write=broken, max_line_bytes=400)
    e.offer(captured(rows=1))
    e.offer(captured(width=200))  # one record alone is over the 400-byte line
    e.offer(replace(captured(), request_chunks=[None]))  # type: ignore[list-item]
    assert e.flush() == 0
    assert (dropped(e, "write_failed"), dropped(e, "too_large"), dropped(e, "unreadable")) == (1, 1, 1)


def test_the_pod_command_line_takes_the_flag_and_the_rate() -> None:
    """``--record-predictions`` is off unless given; the rate must be a share between 0 and 1."""
    assert not parse_settings(["--artifact", "x"], environ={}).record_predictions
    settings = parse_settings(["--artifact", "x", "--record-predictions", "--prediction-sample-rate", "0.5"],
                              environ={})
    assert settings.record_predictions and settings.prediction_sample_rate == 0.5
    with pytest.raises(SystemExit):
        parse_settings(["--artifact", "x", "--prediction-sample-rate", "1.5"], environ={})


# ------------------------------------------------------------------------------------------ a real pod
def printed(pod: Pod) -> list[PodRecordsLine]:
    """The record lines in the pod's output so far."""
    return [PodRecordsLine.model_validate_json(line) for line in pod.log.splitlines()
            if f'"kind":"{POD_RECORDS_KIND}"' in line]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_pod_prints_records_of_every_request_kind_it_answers(start_pod: Callable[..., Pod], artifacts: Artifacts,
                                                               digits: Digits, workers: str) -> None:
    """OIP JSON, binary tensors and /predictions bodies are recorded; refused and router-recorded ones are not."""
    pod = start_pod(artifacts.digits_ts, "--record-predictions", "--log-format", "json",
                    "--http-workers", workers).wait_ready()
    url = f"{pod.url}/v2/models/digits/infer"
    with httpx.Client(timeout=30) as client:
        assert client.post(url, json=infer_body(digits.x[:2]), headers={"x-request-id": "json"}).status_code == 200
        body, headers = binary_body(digits.x[2:5])
        assert client.post(url, content=body, headers={**headers, "x-request-id": "bin"}).status_code == 200
        ts = client.post(f"{pod.url}/predictions/digits", json=digits.x[5].tolist(), headers={"x-request-id": "ts"})
        assert ts.status_code == 200
        assert client.post(url, json=infer_body(digits.x[:1]),
                           headers={"x-request-id": "routed", RECORDED_BY_HEADER: "router"}).status_code == 200
        assert client.post(url, content=b"{not json", headers={"x-request-id": "bad"}).status_code == 400
        records = eventually(lambda: [r for line in printed(pod) for r in line.records], lambda rs: len(rs) >= 6)
        scraped = client.get(f"{pod.url}/metrics").text
    assert sorted(r.request_id for r in records) == ["bin:0", "bin:1", "bin:2", "json:0", "json:1", "ts"]
    assert {(r.model, r.version) for r in records} == {("digits", "1")}
    by_id = {r.request_id: r for r in records}
    assert np.allclose(by_id["bin:1"].inputs or [], digits.x[3]) and np.allclose(by_id["ts"].inputs or [], digits.x[5])
    outputs = by_id["json:0"].outputs or []
    assert len(outputs) == 10 and by_id["json:0"].predicted_class == int(np.argmax(outputs))
    assert "pod_prediction_records_dropped_total" in scraped
    assert metric_samples(scraped, "pod_model_info")  # the pod's own exposition is still whole


def test_a_pod_without_the_flag_prints_no_records(start_pod: Callable[..., Pod], artifacts: Artifacts,
                                                  digits: Digits, tmp_path: Path) -> None:
    """Local pods behind the Python router leave recording to it: no flag, no lines, nothing on /metrics."""
    pod = start_pod(artifacts.digits_ts, "--log-format", "json").wait_ready()
    with httpx.Client(timeout=30) as client:
        assert client.post(f"{pod.url}/v2/models/digits/infer", json=infer_body(digits.x[:2])).status_code == 200
        assert "pod_prediction_records" not in client.get(f"{pod.url}/metrics").text
    pod.stop()
    assert printed(pod) == []
