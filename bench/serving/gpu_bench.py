"""GPU serving overhead: served throughput at saturation vs raw batched forward, and batch-1 latency overhead.

Two models with random weights, defined here (no torchvision): a ResNet-50 (fp16, channels_last, 224x224) and a
BERT-base-sized classifier (12 layers, d=768, 12 heads, sequence length 128). For each, in the same run on the
same GPU:

- raw: the pod's own loader builds the model in this process (the same TorchScript file, precision and memory
  format the pod serves), and the module's forward is timed on inputs already on the GPU: items/s at the serving
  batch size, and batch-1 latency as the median of at least 200 synchronised calls after a warm-up;
- served: the same model directory behind ``python -m handlers.server`` (OIP binary tensors over loopback HTTP,
  closed-loop clients) at saturation and at concurrency 1, once per pod layout in ``--layouts`` (``HxB``: H HTTP
  processes, B batch workers; ``1x1`` is one process).

Prints a JSON summary and writes it to $OUT/gpu_bench.json when OUT is set.

    python bench/serving/gpu_bench.py            # on a GPU machine, under 5 minutes
    python bench/serving/gpu_bench.py --smoke    # tiny sizes on the CPU, to check the script itself
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the raw baseline loads the model with the pod's own loader

from compare_cpu import free_port, wait_until  # noqa: E402 - this folder is on sys.path when run as a script


# ------------------------------------------------------------------------------------------ models
class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1) with a projection shortcut when the shape changes."""

    def __init__(self, channels_in: int, width: int, stride: int):
        super().__init__()
        out = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = (nn.Identity() if stride == 1 and channels_in == out else
                         nn.Sequential(nn.Conv2d(channels_in, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-50 with ``blocks=(3, 4, 6, 3)`` and ``base=64``; smaller for the smoke run."""

    def __init__(self, *, blocks: tuple[int, ...] = (3, 4, 6, 3), base: int = 64, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(base),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        channels = base
        for stage, count in enumerate(blocks):
            width = base * 2 ** stage
            for index in range(count):
                layers.append(Bottleneck(channels, width, 2 if index == 0 and stage > 0 else 1))
                channels = width * 4
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class BertClassifier(nn.Module):
    """BERT-base-sized encoder (token + position embeddings, post-norm layers) with a [CLS] classification head."""

    def __init__(self, *, vocab: int = 30522, d: int = 768, heads: int = 12, layers: int = 12, seq: int = 128,
                 classes: int = 2):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(torch.zeros(1, seq, d))
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.tokens(ids) + self.positions[:, :ids.shape[1]])
        return self.head(hidden[:, 0])


@dataclass(frozen=True)
class Case:
    """One model to measure."""

    name: str
    module: nn.Module
    example: torch.Tensor       # one item (no batch dimension), in the dtype clients send
    datatype: str               # OIP datatype of the input
    batch: int
    extra_args: tuple[str, ...]


def cases(*, smoke: bool, dtype: torch.dtype) -> list[Case]:
    """ResNet-50 and BERT-base, or tiny stand-ins for the smoke run."""
    torch.manual_seed(0)
    image = 32 if smoke else 224
    seq = 16 if smoke else 128
    resnet = ResNet(blocks=(1, 1, 1, 1), base=8, classes=10) if smoke else ResNet()
    bert = BertClassifier(vocab=1000, d=64, heads=2, layers=2, seq=seq) if smoke else BertClassifier(seq=seq)
    half = "FP16" if dtype == torch.float16 else "FP32"
    precision = ("--dtype", "fp16" if dtype == torch.float16 else "fp32")
    return [
        Case("resnet50", resnet.eval(), torch.rand(3, image, image).to(dtype), half, 8 if smoke else 64,
             (*precision, "--channels-last")),
        Case("bert-base", bert.eval(), torch.randint(0, 1000, (seq,)), "INT64", 8 if smoke else 64, precision),
    ]


# ------------------------------------------------------------------------------------------ raw forward
def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_forward(case: Case, folder: Path, *, device: torch.device, seconds: float) -> dict[str, float]:
    """Items/s at the serving batch size and batch-1 latency of the module the pod would serve, inputs on device."""
    from handlers.dataplane import load_runtime
    from handlers.settings import parse_settings

    settings = parse_settings(["--artifact", str(model_dir(case, folder)), "--device", device.type,
                               "--max-batch-size", str(case.batch), *case.extra_args], environ={})
    runner = load_runtime(settings).handler.runner  # type: ignore[attr-defined]
    module = runner.module
    with torch.inference_mode():
        batch, single = (runner.to_device(case.example.unsqueeze(0).expand(n, *case.example.shape).contiguous())
                         for n in (case.batch, 1))
        for _ in range(10):
            module(batch)
        synchronize(device)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            module(batch)
            count += 1
            if count % 4 == 0:
                synchronize(device)
        synchronize(device)
        throughput = count * case.batch / (time.perf_counter() - started)
        for _ in range(50):
            module(single)
        synchronize(device)
        latencies = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(latencies) < 200:
            began = time.perf_counter()
            module(single)
            synchronize(device)
            latencies.append(time.perf_counter() - began)
    del runner, module, batch, single
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ordered = sorted(latencies)
    return {"items_per_s": throughput, "batch1_p50_ms": statistics.median(latencies) * 1000,
            "batch1_p10_ms": ordered[len(ordered) // 10] * 1000, "batch1_calls": len(latencies)}


# ------------------------------------------------------------------------------------------ served
def model_dir(case: Case, folder: Path) -> Path:
    """The case's model as a TorchScript model directory for the pod server (made once per case)."""
    target = folder / case.name
    if (target / "manifest.json").exists():
        return target
    target.mkdir()
    example = case.example.unsqueeze(0).float() if case.example.is_floating_point() else case.example.unsqueeze(0)
    traced = torch.jit.trace(case.module.float().eval(), example, check_trace=False)
    torch.jit.save(traced, str(target / "model.pt"))
    data = (target / "model.pt").read_bytes()
    manifest = {"name": case.name, "version": "1", "format": "torchscript", "handler": "tabular",
                "files": {"model.pt": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
                "inputs": [{"name": "input", "datatype": case.datatype, "shape": [-1, *case.example.shape]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, -1]}]}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def binary_body(case: Case, items: int = 1) -> tuple[bytes, dict[str, str]]:
    """An OIP request of ``items`` inputs with the tensor in the binary extension (no JSON number parsing)."""
    raw = case.example.unsqueeze(0).expand(items, *case.example.shape).contiguous().numpy().tobytes()
    header = json.dumps({"inputs": [{"name": "input", "datatype": case.datatype,
                                     "shape": [items, *case.example.shape],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


async def closed_loop(url: str, body: bytes, headers: dict[str, str], *, concurrency: int,
                      seconds: float) -> tuple[list[float], int]:
    """Closed-loop load on loopback from one process: latencies of answered requests and the error count."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        warm_until = time.perf_counter() + 1.0
        stop_at = warm_until + seconds

        async def worker() -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < stop_at:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                if sent >= warm_until:
                    if ok:
                        latencies.append(time.perf_counter() - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def _client_process(url: str, body: bytes, headers: dict[str, str], concurrency: int,
                    seconds: float) -> tuple[list[float], int]:
    return asyncio.run(closed_loop(url, body, headers, concurrency=concurrency, seconds=seconds))


def load(url: str, body: bytes, headers: dict[str, str], *, concurrency: int, seconds: float, items: int,
         processes: int) -> dict[str, float]:
    """Closed-loop load split over ``processes`` client processes, so the client's own GIL is not the limit."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    if processes == 1:
        results = [_client_process(url, body, headers, concurrency, seconds)]
    else:
        with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_client_process, *zip(*[(url, body, headers, n, seconds) for n in shares],
                                                          strict=True)))
    latencies = [x for own, _ in results for x in own]
    errors = sum(e for _, e in results)
    return {"items_per_s": len(latencies) * items / seconds, "requests_per_s": len(latencies) / seconds,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"), "errors": errors,
            "items_per_request": items, "client_processes": processes}


def start_pod(artifact: Path, *, log_path: Path, repo: Path,
              args: tuple[str, ...]) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m handlers.server`` from ``repo`` on a free port, once ready: the process and its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "handlers.server", "--artifact", str(artifact), "--host", "127.0.0.1",
               "--port", str(port), *args]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, cwd=repo, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                       p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200, timeout_s=180,
                   process=process, what=f"the pod ({' '.join(args)})")
    except RuntimeError as e:
        process.kill()
        raise RuntimeError(f"{e}:\n{log_path.read_text()[-3000:]}") from None
    return process, base


def served(case: Case, folder: Path, *, device: str, seconds: float, concurrency: int, items: int,
           processes: int, http_workers: int = 1, batch_workers: int = 1) -> dict[str, Any]:
    """Start a pod for the case, measure saturation and concurrency-1 latency, stop it."""
    log_path = folder / f"{case.name}-{http_workers}x{batch_workers}.log"
    process, base = start_pod(model_dir(case, folder), log_path=log_path, repo=REPO, args=(
        "--device", device, "--max-batch-size", str(case.batch), "--max-batch-delay-ms", "2", "--queue-size",
        "4096", "--log-format", "json", "--http-workers", str(http_workers), "--batch-workers", str(batch_workers),
        *case.extra_args))
    try:
        url = f"{base}/v2/models/{case.name}/infer"
        body, headers = binary_body(case)
        multi_body, multi_headers = binary_body(case, items)
        for check_body, check_headers in ((body, headers), (multi_body, multi_headers)):
            check = httpx.post(url, content=check_body, headers=check_headers, timeout=60)
            if check.status_code != 200:
                raise RuntimeError(f"{case.name}: {check.status_code} {check.text}")
        saturated = load(url, body, headers, concurrency=concurrency, seconds=seconds, items=1,
                         processes=processes)
        saturated_multi = load(url, multi_body, multi_headers, concurrency=concurrency, seconds=seconds,
                               items=items, processes=processes)
        single = load(url, body, headers, concurrency=1, seconds=seconds, items=1, processes=1)
        batches = [line for line in httpx.get(f"{base}/metrics").text.splitlines()
                   if line.startswith("pod_batch_size_") and not line.startswith("pod_batch_size_bucket")]
        return {"http_workers": http_workers, "batch_workers": batch_workers, "saturated": saturated,
                "saturated_multi_item": saturated_multi,
                "concurrency_1": single, "batch_metrics": batches}
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    """Measure every case and print (and save) the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--seconds", type=float, default=None, help="measuring time per point")
    parser.add_argument("--concurrency", type=int, default=None, help="clients at saturation")
    parser.add_argument("--items-per-request", type=int, default=16, help="inputs per request, second load")
    parser.add_argument("--client-processes", type=int, default=None, help="load generator processes")
    parser.add_argument("--layouts", default=None,
                        help="pod layouts to serve, comma-separated HxB (H HTTP processes, B batch workers); "
                             "default 1x1,8x1,8x2 (1x1,2x2 with --smoke)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    seconds = args.seconds or (2.0 if args.smoke else 10.0)
    concurrency = args.concurrency or (16 if args.smoke else 128)
    layouts = [tuple(int(n) for n in layout.split("x")) for layout in
               (args.layouts or ("1x1,2x2" if args.smoke else "1x1,8x1,8x2")).split(",")]
    summary: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "dtype": str(dtype), "smoke": args.smoke,
                               "date": time.strftime("%Y-%m-%d"), "concurrency": concurrency,
                               "layouts": [f"{h}x{b}" for h, b in layouts], "models": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for case in cases(smoke=args.smoke, dtype=dtype):
            raw = raw_forward(case, Path(tmp), device=device, seconds=seconds / 2)
            result: dict[str, Any] = {"batch": case.batch, "raw": raw}
            for http_workers, batch_workers in layouts:
                pod = served(case, Path(tmp), device=device.type, seconds=seconds, concurrency=concurrency,
                             items=args.items_per_request,
                             processes=args.client_processes or (2 if args.smoke else 8),
                             http_workers=http_workers, batch_workers=batch_workers)
                pod["throughput_ratio"] = pod["saturated"]["items_per_s"] / raw["items_per_s"]
                pod["throughput_ratio_multi_item"] = pod["saturated_multi_item"]["items_per_s"] / raw["items_per_s"]
                pod["batch1_overhead_ms"] = pod["concurrency_1"]["p50_ms"] - raw["batch1_p50_ms"]
                result[f"served_{http_workers}x{batch_workers}"] = pod
                print(json.dumps({"model": case.name, "layout": f"{http_workers}x{batch_workers}",
                                  "ratio": round(pod["throughput_ratio"], 3),
                                  "ratio_multi": round(pod["throughput_ratio_multi_item"], 3),
                                  "overhead_ms": round(pod["batch1_overhead_ms"], 3)}), file=sys.stderr, flush=True)
            summary["models"][case.name] = result
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(summary, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_bench.json").write_text(text)


if __name__ == "__main__":
    main()
