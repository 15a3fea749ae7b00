"""What crosses between an HTTP front and the model process: typed messages over a real pipe, shared counters.

The messages travel through a real ``Channel`` pipe (pickled, tensors out of band), so these check what the
other process would see: errors keep their class, reason and attributes; a request comes back whole whether
its tensors travelled inline or in the arena; the counters add up to what the batcher and gauges read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import generate_latest

from handlers.arena import Arena
from handlers.base import InferenceRequest, InferenceResult
from handlers.channel import Channel
from handlers.front_counters import FrontCounters
from handlers.messages import InferBatch, Job, PackedError, Results
from handlers.metrics import create_metrics
from schemas.errors import ArtifactRejected, PermanentError, Reason, TemporaryError


class HandlerOwnError(PermanentError):
    """An error class that only the model process's handler code defines."""

    def __init__(self, message: str, *, code: int):
        super().__init__(message, reason=Reason.HANDLER_ERROR)
        self.code = code


@pytest.fixture
def pipe() -> Iterator[tuple[Channel, Channel]]:
    """Both ends of one channel, closed afterwards."""
    read, write = Channel.pipe()
    yield read, write
    read.close()
    write.close()


def through(pipe: tuple[Channel, Channel], message: Any) -> Any:
    """``message`` as the other end of the pipe reads it."""
    read, write = pipe
    sender = threading.Thread(target=write.send, args=(message,))  # a big message fills the pipe: read meanwhile
    sender.start()
    received = read.recv()
    sender.join()
    return received


@pytest.mark.parametrize(("error", "arrives_as"), [
    (TemporaryError("full", reason=Reason.QUEUE_FULL, delay=0.1), TemporaryError),
    (ArtifactRejected("bad", reason=Reason.UNKNOWN_HANDLER, file="x.py"), ArtifactRejected),
    (HandlerOwnError("mine", code=7), PermanentError),
], ids=["temporary", "keyword-only constructor", "handler's own class"])
def test_errors_cross_with_class_reason_and_attributes(pipe, error, arrives_as):
    """A packed error unpacks as its nearest schemas.errors class, with its message, reason and attributes."""
    results = through(pipe, Results([3], [PackedError.of(error)]))
    unpacked = results.results[0].unpack()
    assert type(unpacked) is arrives_as
    assert (unpacked.message, unpacked.reason, vars(unpacked)) == (error.message, error.reason, vars(error))
    assert results.job_ids == [3]


def test_requests_cross_inline_and_through_the_arena(pipe):
    """A request comes back whole, its tensors inline or as views of the arena they were placed in."""
    tensors = {"input": np.arange(12, dtype=np.float32).reshape(3, 4)}
    request = InferenceRequest(id="r-1", inputs=tensors, headers={"a": "b"}, parameters={"k": 1})
    arena = Arena(1 << 16)
    placement = arena.place(tensors)
    sent = InferBatch([Job.of(0, request, placement=None, timeout_s=1.0),
                       Job.of(1, request, placement=placement, timeout_s=2.0)])
    inline, placed = through(pipe, sent).jobs
    assert placed.inputs is None and placed.placement == placement and placed.timeout_s == 2.0
    for restored in (inline.restore(None), placed.restore(arena.view(placed.placement))):
        assert restored.id == "r-1" and restored.headers == {"a": "b"} and restored.parameters == {"k": 1}
        assert np.array_equal(restored.inputs["input"], tensors["input"])


def test_results_keep_tensors_and_payloads(pipe):
    """Answers keep each job id next to its result."""
    answers = Results([5, 6], [InferenceResult(outputs={"y": np.ones(3)}), InferenceResult(payload={"p": 1})])
    received = through(pipe, answers)
    assert received.job_ids == [5, 6]
    assert np.array_equal(received.results[0].outputs["y"], np.ones(3)) and received.results[1].payload == {"p": 1}


def test_front_counters_add_up_for_the_model_process():
    """Arriving counts requests decoded or sent and not yet read; in-flight and blocks sum every front's row."""
    counters = FrontCounters(2)
    first, second = counters.of(0), counters.of(1)
    first.arriving, first.sent, second.sent = 1, 3, 2
    first.in_flight, second.in_flight, second.blocks = 2, 4, 3
    assert counters.arriving() == 6
    counters.received(5)
    assert (counters.arriving(), counters.in_flight(), counters.handoff_blocks()) == (1, 6, 3)


def test_metrics_export_the_fronts_request_counts_instead_of_their_own():
    """Given the fronts' request counts, the registry exports those, once, and not this process's own."""
    counters = FrontCounters(1)
    metrics = create_metrics(model="m", version="1", device=torch.device("cpu"), request_counts=counters.requests)
    counters.requests.record(0, "infer", 200, 0.01)
    metrics.requests.labels("infer", "500").inc()  # unexported: the fronts answer HTTP
    text = generate_latest(metrics.registry).decode()
    assert 'pod_requests_total{code="200",endpoint="infer"} 1.0' in text and 'code="500"' not in text
