"""How requests reach the model: the fronts' shared-memory arenas, the batcher's queue, several batch workers.

Unit tests drive ``Arena`` and ``Batcher`` directly; the pod tests run real server processes over real HTTP:
binary tensors through the arena and through the pipe answer alike, a request too big for the arena still
answers, ``--batch-workers 2`` serves correct results, and the layouts it cannot serve safely are refused.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pod_testkit import SAFETY_NET_S, Artifacts, BatchGate, Digits, Pod, eventually, infer_body, metric_samples
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from handlers.app import ROUTES
from handlers.arena import ALIGN, Arena, Placement
from handlers.base import InferenceRequest, InferenceResult
from handlers.batching import Batcher
from handlers.metrics import ENDPOINTS, LATENCY_BUCKETS, create_metrics
from handlers.request_metrics import SharedRequestMetrics
from schemas.errors import Reason, ReleaseError, TemporaryError


# ------------------------------------------------------------------------------------------ arena
def test_arena_round_trips_tensors_of_every_dtype():
    """Tensors placed by a front read back identical, in place, through ``view``."""
    arena = Arena(1 << 16)
    tensors = {"f16": np.arange(30, dtype=np.float16).reshape(2, 15), "i64": np.arange(7, dtype=np.int64),
               "u8": np.frombuffer(b"abc", dtype=np.uint8), "f32": np.ones((3, 1, 2), dtype=np.float32)}
    placement = arena.place(tensors)
    assert placement is not None
    views = arena.view(placement)
    for name, array in tensors.items():
        assert views[name].dtype == array.dtype and np.array_equal(views[name], array)
    assert all(slot.offset % ALIGN == 0 for slot in placement.tensors)


def test_full_arena_declines_and_frees_out_of_order_are_reclaimed():
    """A full arena returns None; a block freed before older ones is reclaimed once they are freed too."""
    arena = Arena(4 * 1024)
    block = {"x": np.zeros(1024, dtype=np.uint8)}
    placed = [arena.place(block) for _ in range(4)]
    assert all(p is not None for p in placed)
    assert arena.place(block) is None
    assert arena.place({"x": np.zeros(8 << 10, dtype=np.uint8)}) is None  # larger than the whole arena
    arena.free(placed[1].start)  # type: ignore[union-attr]
    assert arena.used_blocks == 4 and arena.place(block) is None
    arena.free(placed[0].start)  # type: ignore[union-attr]
    assert arena.used_blocks == 2
    assert arena.place(block) is not None and arena.place(block) is not None
    assert arena.place(block) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 3000), st.integers(0, 1 << 30)), max_size=120))
def test_arena_blocks_never_overlap_and_keep_their_bytes(steps):
    """Any sequence of placements and frees keeps live blocks disjoint and their contents intact."""
    arena = Arena(16 * 1024)
    live: list[tuple[np.ndarray, Placement]] = []
    for is_free, size, pick in steps:
        if is_free and live:
            array, placement = live.pop(pick % len(live))
            assert np.array_equal(arena.view(placement)["x"], array)
            arena.free(placement.start)
            continue
        array = np.full(size, pick % 251, dtype=np.uint8)
        placement = arena.place({"x": array})
        if placement is None:
            continue
        start = placement.start
        for other, other_placement in live:
            assert start + size <= other_placement.start or other_placement.start + other.nbytes <= start
        live.append((array, placement))
    for array, placement in live:
        assert np.array_equal(arena.view(placement)["x"], array)


# ------------------------------------------------------------------------------------------ batcher
class Reply:
    """A cross-process style reply: done once answered, or once marked expired."""

    def __init__(self, expired: bool = False):
        self.expired = expired

    def done(self) -> bool:
        return self.expired


def echo(batch):
    return [InferenceResult(payload=request.id) for request in batch]


def make_batcher(run_batch=echo, **options) -> tuple[Batcher, list]:
    delivered: list = []
    batcher = Batcher(run_batch, max_batch_size=options.pop("max_batch_size", 8),
                      max_batch_delay_s=options.pop("max_batch_delay_s", 0.0),
                      queue_size=options.pop("queue_size", 16),
                      metrics=create_metrics(model="m", version="1", device=torch.device("cpu")), **options)
    batcher.start_detached(lambda replies, results: delivered.extend(zip(replies, results, strict=True)))
    return batcher, delivered


def test_submit_many_queues_what_fits_and_refuses_the_rest():
    """A burst larger than the free queue room is queued up to the room; the caller refuses the rest."""
    started, gate = threading.Event(), threading.Event()

    def blocked(batch):
        started.set()
        gate.wait(SAFETY_NET_S)
        return echo(batch)

    batcher, delivered = make_batcher(blocked, max_batch_size=1, queue_size=3)
    batcher.submit(InferenceRequest(id="running"), Reply())
    assert started.wait(SAFETY_NET_S)  # the first request left the queue: its batch runs
    queued = batcher.submit_many([(InferenceRequest(id=str(i)), Reply()) for i in range(5)])
    assert queued == 3
    with pytest.raises(TemporaryError) as refused:
        batcher.submit(InferenceRequest(id="late"), Reply())
    assert refused.value.reason is Reason.QUEUE_FULL
    gate.set()
    batcher.stop()
    assert [result.payload for _, result in delivered] == ["running", "0", "1", "2"]


def test_expired_requests_are_answered_not_dropped():
    """A request that timed out before its batch ran still gets a request_timeout answer (frees its memory)."""
    batcher, delivered = make_batcher()
    expired, live = Reply(expired=True), Reply()
    batcher.submit_many([(InferenceRequest(id="gone"), expired), (InferenceRequest(id="here"), live)])
    batcher.stop()
    by_reply = dict(delivered)
    assert isinstance(by_reply[expired], ReleaseError) and by_reply[expired].reason is Reason.REQUEST_TIMEOUT
    assert by_reply[live].payload == "here"


def test_two_batch_workers_run_batches_at_the_same_time():
    """With ``workers=2`` a second batch starts while the first is still running."""
    both_running = threading.Barrier(2, timeout=10)

    def meet(batch):
        both_running.wait()  # raises BrokenBarrierError unless two batches run at once
        return echo(batch)

    batcher, delivered = make_batcher(meet, max_batch_size=1, workers=2)
    batcher.submit_many([(InferenceRequest(id=str(i)), Reply()) for i in range(2)])
    batcher.stop()
    assert sorted(result.payload for _, result in delivered) == ["0", "1"]


def run_on_loop(run_batch, requests: list[InferenceRequest], **options) -> tuple[list[InferenceResult], float]:
    """Answers to ``requests`` sent at once through ``Batcher.infer`` on an event loop, and the batches counted.

    ``run_batch(batcher, batch)`` gets the batcher too, so it can look at the queue.
    """
    metrics = create_metrics(model="m", version="1", device=torch.device("cpu"))
    batcher = Batcher(lambda batch: run_batch(batcher, batch), max_batch_size=8, max_batch_delay_s=0.05,
                      queue_size=16, metrics=metrics, **options)

    async def send() -> list[InferenceResult]:
        batcher.start(asyncio.get_running_loop())
        return await asyncio.gather(*(batcher.infer(request, timeout_s=SAFETY_NET_S) for request in requests))

    results = asyncio.run(send())
    batcher.stop()
    return results, metric_samples(generate_latest(metrics.registry).decode(), "pod_batch_size")[
        "pod_batch_size_count"]


def test_lone_request_runs_inline_on_the_event_loop():
    """With ``inline``, a request that finds the batcher idle runs on the event loop's thread, counted as a batch."""
    threads: list[threading.Thread] = []

    def record(batcher, batch):
        threads.extend(threading.current_thread() for _ in batch)
        return echo(batch)

    results, batches = run_on_loop(record, [InferenceRequest(id="alone")], inline=True)
    assert [result.payload for result in results] == ["alone"] and batches == 1
    assert threads == [threading.main_thread()]


def test_requests_in_company_go_to_the_worker_not_inline():
    """With ``inline``, requests that arrive together are all run by the batch worker, none on the event loop."""
    threads: list[threading.Thread] = []

    def record(batcher, batch):
        if not threads and len(batch) < 4:  # hold a first, partial batch until the rest is queued behind it
            eventually(lambda: batcher.depth, lambda depth: depth > 0)
        threads.extend(threading.current_thread() for _ in batch)
        return echo(batch)

    results, _ = run_on_loop(record, [InferenceRequest(id=str(i)) for i in range(4)], inline=True)
    assert [result.payload for result in results] == ["0", "1", "2", "3"]
    assert len(threads) == 4 and threading.main_thread() not in threads


def test_without_inline_a_lone_request_runs_on_the_worker():
    """Without ``inline`` (handler code shipped with the model), even a lone request runs on the batch worker."""
    threads: list[threading.Thread] = []

    def record(batcher, batch):
        threads.extend(threading.current_thread() for _ in batch)
        return echo(batch)

    results, _ = run_on_loop(record, [InferenceRequest(id="alone")])
    assert [result.payload for result in results] == ["alone"] and threads[0].name == "pod-batcher-0"


# ------------------------------------------------------------------------------------------ pods
def binary_body(rows: np.ndarray, **parameters: float | str) -> tuple[bytes, dict[str, str]]:
    """An OIP infer request with the rows as a binary FP32 tensor."""
    raw = rows.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": parameters}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def predicted(response: httpx.Response) -> list[int]:
    """The argmax class of every row of an OIP answer."""
    output = response.json()["outputs"][0]
    return np.asarray(output["data"]).reshape(output["shape"]).argmax(axis=1).tolist()


@pytest.mark.parametrize("handoff", ["1", "0"], ids=["shared-memory", "pipe"])
def test_arena_and_pipe_hand_offs_answer_alike(start_pod, artifacts: Artifacts, digits: Digits, handoff: str):
    """Binary and JSON tensors through the arena (or the pipe), including one too big for a 1 MB arena."""
    pod = start_pod(artifacts.digits_ts, "--http-workers", "2", "--handoff-mb", handoff).wait_ready()
    url = f"{pod.url}/v2/models/digits/infer"
    expected = digits.model(torch.from_numpy(digits.x)).argmax(1).tolist()
    with httpx.Client(timeout=30) as client:
        body, headers = binary_body(digits.x[:20])
        assert predicted(client.post(url, content=body, headers=headers)) == expected[:20]
        assert predicted(client.post(url, json=infer_body(digits.x[20:25]))) == expected[20:25]
        big = np.tile(digits.x, (3, 1))  # 5391 rows x 64 floats: 1.4 MB, more than the whole arena
        body, headers = binary_body(big)
        assert predicted(client.post(url, content=body, headers=headers)) == expected * 3
        for start in range(0, 200, 10):  # the arena's blocks come back after each answer
            body, headers = binary_body(digits.x[start:start + 10])
            assert predicted(client.post(url, content=body, headers=headers)) == expected[start:start + 10]


def test_timed_out_requests_give_their_arena_blocks_back(start_pod, artifacts: Artifacts, digits: Digits,
                                                         tmp_path: Path):
    """Requests the fronts gave up on (504) hold their blocks until the model process answers, then free them."""
    pod = start_pod(artifacts.slow, "--http-workers", "2", "--handoff-mb", "1", "--max-batch-size", "2",
                    "--request-timeout-s", "0.3").wait_ready()
    url = f"{pod.url}/v2/models/slow/infer"
    gate_path = tmp_path / "gate"
    body, headers = binary_body(digits.x[:600], gate=str(gate_path))  # 150 KB: six fit one front's 1 MB arena

    def gauge() -> float:
        return metric_samples(httpx.get(f"{pod.url}/metrics").text, "pod_handoff")[
            "pod_handoff_blocks_in_use"]

    async def wave() -> list[int]:
        async def one() -> int:
            async with httpx.AsyncClient(timeout=30) as client:
                return (await client.post(url, content=body, headers=headers)).status_code

        return list(await asyncio.gather(*(one() for _ in range(6))))

    for _ in range(3):
        with BatchGate(gate_path):
            assert asyncio.run(wave()) == [504] * 6
            assert gauge() == 6  # the model process answers none while the first batch is held
        assert eventually(gauge, lambda blocks: blocks == 0) == 0
    paths = metric_samples(httpx.get(f"{pod.url}/metrics").text, "pod_handoff_requests_total")
    assert paths['pod_handoff_requests_total{path="shared_memory"}'] == 18
    assert paths['pod_handoff_requests_total{path="pipe"}'] == 0


def test_batch_workers_serve_concurrent_requests(start_pod, artifacts: Artifacts, digits: Digits):
    """``--batch-workers 2`` answers every concurrent request with its own rows' classes."""
    pod: Pod = start_pod(artifacts.digits_ts, "--http-workers", "2", "--batch-workers", "2",
                         "--max-batch-size", "4").wait_ready()
    url = f"{pod.url}/v2/models/digits/infer"
    expected = digits.model(torch.from_numpy(digits.x[:64])).argmax(1).tolist()
    results: dict[int, list[int]] = {}

    def client(worker: int) -> None:
        with httpx.Client(timeout=30) as session:
            for i in range(worker, 64, 8):
                results[i] = predicted(session.post(url, json=infer_body(digits.x[i:i + 1])))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [results[i][0] for i in range(64)] == expected
    assert metric_samples(httpx.get(f"{pod.url}/metrics").text, "pod_batch_size_sum")["pod_batch_size_sum"] >= 64


def test_batch_workers_refuse_artifact_handler_code(start_pod, artifacts: Artifacts):
    """Handler code shipped in an artifact is not known to be thread-safe: exit 3 with model_load_failed."""
    pod = start_pod(artifacts.slow, "--batch-workers", "2")
    assert pod.wait_exit(timeout_s=60) == 3
    assert "model_load_failed" in pod.log and "--batch-workers 1" in pod.log


def test_batch_workers_refuse_compile(start_pod, artifacts: Artifacts):
    """``--batch-workers 2 --compile default`` is a bad command line: exit 2 saying why."""
    pod = start_pod(artifacts.digits_ts, "--batch-workers", "2", "--compile", "default")
    assert pod.wait_exit(timeout_s=60) == 2
    assert "cannot be combined with --compile" in pod.log


# ------------------------------------------------------------------------------------------ request metrics
def test_shared_request_metrics_export_what_prometheus_counters_would():
    """Two fronts' records, summed at scrape, give the exact exposition of one process's own counters."""
    native = CollectorRegistry()
    requests = Counter("pod_requests", "Requests answered, by endpoint and HTTP status code.", ["endpoint", "code"],
                       registry=native)
    latency = Histogram("pod_request_latency_seconds", "Time from request arrival to response, by endpoint.",
                        ["endpoint"], buckets=LATENCY_BUCKETS, registry=native)
    shared = SharedRequestMetrics(2)
    exported = CollectorRegistry()
    exported.register(shared)
    observations = [(0, "infer", 200, 0.0005), (1, "infer", 200, 0.003), (1, "infer", 504, 30.0),
                    (0, "metrics", 200, 0.0001), (1, "predictions", 400, 0.01)]
    for front, endpoint, code, seconds in observations:
        shared.record(front, endpoint, code, seconds)
        requests.labels(endpoint, str(code)).inc()
        latency.labels(endpoint).observe(seconds)

    def samples(registry: CollectorRegistry) -> list[str]:
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if line and not line.startswith("#") and "_created" not in line)

    assert samples(exported) == samples(native)


def test_every_route_is_a_known_metrics_endpoint():
    """Each route's ``endpoint`` label has its row in the shared request metrics."""
    assert {name for _, name, _, _ in ROUTES} == set(ENDPOINTS)
