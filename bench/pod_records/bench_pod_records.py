"""What recording predictions in the pod costs a request: one pod without, one with ``--record-predictions``.

Two real pods of a digits TorchScript MLP (``tests/artifacts.py``) on loopback, one started with
``--record-predictions --prediction-sample-rate 1`` (every request recorded, the worst case) printing into a
file as a container runtime's pipe would take it. Closed loops of single-row OIP JSON requests at concurrency 1
and 8, alternating between the pods for ``--rounds`` rounds so that the shared machine's load hits both alike:
throughput ratio (recording / not), added p50 and p99, and what the recording pod printed and dropped.

    PYTHONPATH=. /work/main/.venv/bin/python bench/pod_records/bench_pod_records.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.artifacts import DigitsMLP, torchscript_bytes, write_artifact  # noqa: E402
from tests.handlers.pod_testkit import Pod, metric_samples  # noqa: E402

CONCURRENCY = (1, 8)
BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                               "data": [0.25] * 64}]}).encode()


async def closed_loop(url: str, concurrency: int, seconds: float) -> list[float]:
    """Latencies (s) of the requests ``concurrency`` clients complete in ``seconds`` after a 0.5 s warm-up."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json"}) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + 0.5, start + 0.5 + seconds

        async def client() -> None:
            while (now := time.perf_counter()) < stop_at:
                async with session.post(url, data=BODY) as response:
                    await response.read()
                    assert response.status == 200, response.status
                if now >= measure_from:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    """Throughput and latency percentiles of one pod's runs."""
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "rps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    """Run the comparison and print (and write) the results as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="1", help="the recording pod's --prediction-sample-rate")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_artifact(root, "digits", "1", {"model.pt": torchscript_bytes(DigitsMLP())})
        artifact = root / "models" / "digits" / "1"
        plain = Pod(artifact, log_dir=root, args=["--log-format", "json"])
        recording = Pod(artifact, log_dir=root, args=["--log-format", "json", "--record-predictions",
                                                      "--prediction-sample-rate", args.rate])
        try:
            plain.wait_ready(timeout_s=120)
            recording.wait_ready(timeout_s=120)
            results = run(plain, recording, seconds=args.seconds, rounds=args.rounds)
            time.sleep(1.5)  # the emitter prints once a second: let the last batch out before counting
            scraped = httpx.get(f"{recording.url}/metrics").text
        finally:
            plain.stop()
            recording.stop()
    results["printed"] = metric_samples(scraped, "pod_prediction_records_printed_total")
    results["dropped"] = metric_samples(scraped, "pod_prediction_records_dropped_total")
    results["sample_rate"] = float(args.rate)
    results["load_average"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def run(plain: Pod, recording: Pod, *, seconds: float, rounds: int) -> dict[str, Any]:
    """Alternating closed loops against both pods at each concurrency."""
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "by_concurrency": {}}
    for concurrency in CONCURRENCY:
        runs: dict[str, list[float]] = {"plain": [], "recording": []}
        for _ in range(rounds):
            for name, pod in (("plain", plain), ("recording", recording)):
                runs[name] += asyncio.run(closed_loop(f"{pod.url}/v2/models/digits/infer", concurrency, seconds))
        base, rec = summary(runs["plain"], seconds * rounds), summary(runs["recording"], seconds * rounds)
        out["by_concurrency"][str(concurrency)] = {
            "plain": base, "recording": rec, "throughput_ratio": rec["rps"] / base["rps"],
            "added_p50_ms": rec["p50_ms"] - base["p50_ms"], "added_p99_ms": rec["p99_ms"] - base["p99_ms"]}
    return out


if __name__ == "__main__":
    main()
