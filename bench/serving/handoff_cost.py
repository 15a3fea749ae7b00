"""CPU cost per request of the pod's own machinery, by process, for each way of laying out the pod.

On a GPU the model process is the one process every request passes through: its CPU time per request bounds
the requests/s the pod can feed the GPU, whatever the GPU's speed. This measures that bound on any machine. The
models are deliberately trivial (an image-shaped FP32 tensor of 3x224x224 of which one pixel reaches a linear
layer, and 128 token ids through an embedding), so what is left is the pod's work: HTTP, decoding, the hand-off
between processes, stacking batches and answering.

Each layout is started in turn, loaded by a closed loop of single-input OIP requests with binary tensors, and
read from ``/proc``: CPU seconds of the model process and of the HTTP fronts over the requests the batcher ran.
Layouts are measured in interleaved rounds (so drift on a shared machine hits all of them), median reported.

    python bench/serving/handoff_cost.py                 # about 3 minutes
    python bench/serving/handoff_cost.py --rounds 1 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench

TICKS = os.sysconf("SC_CLK_TCK")
LAYOUTS: dict[str, tuple[str, ...]] = {
    "one process": ("--http-workers", "1"),
    "2 fronts, pipe": ("--http-workers", "2", "--handoff-mb", "0"),
    "2 fronts, shared memory": ("--http-workers", "2"),
    "2 fronts, shared memory, 2 batch workers": ("--http-workers", "2", "--batch-workers", "2"),
}


class ImageShaped(nn.Module):
    """3x224x224 in (one pixel read), 10 scores out: the pod still stacks every byte of every input."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, :, 0, 0].float())


class TokenShaped(nn.Module):
    """128 token ids in, 2 scores out, for almost no compute."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(1000, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(ids).mean(1))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    """The pod's front processes."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def batcher_totals(base: str) -> tuple[float, float]:
    """Requests and batches the pod's batcher has run so far."""
    samples = dict(line.split()[:2] for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines()
                   if line.startswith(("pod_batch_size_sum", "pod_batch_size_count")))
    return float(samples.get("pod_batch_size_sum", 0)), float(samples.get("pod_batch_size_count", 0))


def measure(case: gpu_bench.Case, folder: Path, layout: tuple[str, ...], *, seconds: float, concurrency: int,
            repo: Path) -> dict[str, float]:
    """Start the pod in ``layout``, load it, and return requests/s and CPU microseconds per request."""
    process, base = gpu_bench.start_pod(
        gpu_bench.model_dir(case, folder), log_path=folder / "pods.log", repo=repo,
        args=("--device", "cpu", "--max-batch-size", "64", "--max-batch-delay-ms", "2", "--queue-size", "4096",
              "--torch-threads", "1", "--log-format", "json", *layout))
    try:
        url = f"{base}/v2/models/{case.name}/infer"
        body, headers = gpu_bench.binary_body(case)
        if httpx.post(url, content=body, headers=headers, timeout=30).status_code != 200:
            raise RuntimeError(f"the pod refused the request: {layout}")
        fronts = children(process.pid)
        before = [cpu_seconds(process.pid), *(cpu_seconds(pid) for pid in fronts)]
        ran_before, batches_before = batcher_totals(base)
        load = gpu_bench.load(url, body, headers, concurrency=concurrency, seconds=seconds, items=1, processes=1)
        ran_after, batches_after = batcher_totals(base)
        ran, ran_batches = ran_after - ran_before, batches_after - batches_before
        after = [cpu_seconds(process.pid), *(cpu_seconds(pid) for pid in fronts)]
        used = [b - a for a, b in zip(before, after, strict=True)]
        return {"requests_per_s": load["requests_per_s"], "p50_ms": load["p50_ms"], "mean_batch": ran / ran_batches,
                "model_process_us": used[0] / ran * 1e6,
                "fronts_us": sum(used[1:]) / ran * 1e6 if fronts else 0.0}
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    """Measure every layout for both request shapes and print the medians as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point (after 1 s warm-up)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="another checkout (an earlier commit) whose 2-front pod is measured in the same rounds")
    args = parser.parse_args()
    layouts = {name: (gpu_bench.REPO, layout) for name, layout in LAYOUTS.items()}
    if args.baseline_repo is not None:
        layouts["2 fronts, baseline checkout"] = (args.baseline_repo.resolve(), ("--http-workers", "2"))
    torch.manual_seed(0)
    cases = [gpu_bench.Case("image-shaped", ImageShaped().eval(), torch.rand(3, 224, 224), "FP32", 64, ()),
             gpu_bench.Case("token-shaped", TokenShaped().eval(), torch.randint(0, 1000, (128,)), "INT64", 64, ())]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {c.name: {name: [] for name in layouts} for c in cases}
    with tempfile.TemporaryDirectory(prefix="handoff-") as tmp:
        for _ in range(args.rounds):
            for case in cases:
                for name, (repo, layout) in layouts.items():
                    point = measure(case, Path(tmp), layout, seconds=args.seconds, concurrency=args.concurrency,
                                    repo=repo)
                    samples[case.name][name].append(point)
                    print(json.dumps({"model": case.name, "layout": name, **{k: round(v, 1) for k, v in
                                                                             point.items()}}),
                          file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rounds": args.rounds,
                               "seconds": args.seconds, "concurrency": args.concurrency, "models": {}}
    for case_name, by_layout in samples.items():
        summary["models"][case_name] = {
            name: {key: round(statistics.median(point[key] for point in points), 1) for key in points[0]}
            for name, points in by_layout.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
