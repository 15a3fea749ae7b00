"""Closed-loop HTTP load generator (asyncio + aiohttp), bounded in requests and time, loopback only.

Each of ``concurrency`` workers sends its next request as soon as the previous answer arrives, so throughput and
latency are measured together, the way a fixed pool of callers would see them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp


@dataclass(frozen=True)
class LoadResult:
    """One measured point."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _run(url: str, body: bytes, headers: dict[str, str], *, concurrency: int, duration_s: float,
               warmup_s: float, max_requests: int) -> LoadResult:
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the load generator only targets loopback addresses")
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker() -> None:
            nonlocal errors
            while True:
                sent = time.perf_counter()
                if sent >= stop_at or len(latencies) >= max_requests:
                    return
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                done = time.perf_counter()
                if sent >= measure_from:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = min(time.perf_counter(), stop_at) - measure_from
    return LoadResult(concurrency=concurrency, requests=len(latencies), errors=errors, seconds=round(elapsed, 3),
                      throughput=round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
                      p50_ms=round(statistics.median(latencies) * 1000, 3) if latencies else float("nan"),
                      p99_ms=round(_percentile(latencies, 0.99) * 1000, 3))


def run_load(url: str, body: bytes, *, concurrency: int, duration_s: float = 6.0, warmup_s: float = 1.0,
             max_requests: int = 200_000, content_type: str = "application/json") -> LoadResult:
    """Measure one concurrency level against one URL."""
    return asyncio.run(_run(url, body, {"Content-Type": content_type}, concurrency=concurrency,
                            duration_s=duration_s, warmup_s=warmup_s, max_requests=max_requests))
