"""The latency load runs while the quality pass runs, and both are still judged as before.

A stand-in pod over real HTTP answers the eval set with the right class for every row; its quality answers wait
until a latency request has arrived, so a runner that ran the two one after the other sees every quality answer
marked as not overlapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from release.gates import HttpGateRunner
from release.ports import Candidate
from schemas.policy import GatePolicy, LatencyGate, MetricGate, ReleasePolicy
from tests.artifacts import manifest_for
from tests.servers.in_thread import serve_in_thread

WAIT_FOR_LOAD_S = 10.0  # a hang guard: with overlapping gates the load arrives at once


class StandInPod:
    """Answers OIP requests with one-hot class scores (the class is the row's first value) and records overlap."""

    def __init__(self) -> None:
        self.load_seen = asyncio.Event()
        self.quality_overlapped: list[bool] = []
        self.latency_requests = 0

    async def infer(self, request: Request) -> JSONResponse:
        """One batch: latency requests are single rows, the quality pass sends whole batches."""
        tensor = (await request.json())["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        if len(rows) == 1:
            self.latency_requests += 1
            self.load_seen.set()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.load_seen.wait(), timeout=WAIT_FOR_LOAD_S)
            self.quality_overlapped.append(self.load_seen.is_set())
        scores = np.eye(10, dtype=np.float32)[rows[:, 0].astype(int)]
        return JSONResponse({"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": list(scores.shape),
                                          "data": scores.ravel().tolist()}]})


def eval_folder(root: Path) -> Path:
    """A model folder with an eval set whose label is each row's first value."""
    y = np.arange(40) % 10
    x = np.zeros((40, 64), dtype=np.float32)
    x[:, 0] = y
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    root.mkdir()
    (root / "eval.npz").write_bytes(buffer.getvalue())
    return root


def test_quality_pass_and_latency_load_overlap_and_are_judged_as_before(tmp_path: Path):
    """Every quality batch is answered while the latency load runs; accuracy, latency and errors are all judged."""
    pod = StandInPod()
    app = Starlette(routes=[Route("/v2/models/m/infer", pod.infer, methods=["POST"])])
    folder = eval_folder(tmp_path / "m")
    manifest = manifest_for("m", "2", {"eval.npz": (folder / "eval.npz").read_bytes()}, eval="eval.npz")
    policy = ReleasePolicy(gates=GatePolicy(metrics=[MetricGate(metric="accuracy", min=0.99)], regression=[],
                                            latency=LatencyGate(requests=200, concurrency=2, p99_ms=10_000.0),
                                            smoke=False, batch_size=8))
    with serve_in_thread(app, name="stand-in-pod") as url:
        candidate = Candidate(model="m", version="2", version_id=1, manifest=manifest, endpoints=(url,),
                              local_path=folder)
        report = HttpGateRunner().evaluate(candidate, baseline=None, policy=policy)

    assert pod.quality_overlapped == [True] * 5 and pod.latency_requests == 200
    assert report.passed and report.metrics["accuracy"] == 1.0
    assert [g.name for g in report.gates] == ["metric:accuracy", "latency:p99_ms", "error_rate"]
    assert set(report.timings) == {"quality_s", "latency_s", "total_s"}
