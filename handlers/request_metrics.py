"""Request counts and latencies that HTTP front processes record in shared memory, read by the model process.

With ``--http-workers N`` the fronts answer HTTP, but ``/metrics`` comes from the model process's registry. The
fronts write each answered request into arrays shared before the fork (each front its own rows, so there is one
writer per cell), and a collector in the model process sums them when scraped: a scrape is exact the moment it
is taken, and counting costs the model process nothing per request.

Exported as ``pod_requests_total{endpoint, code}`` and ``pod_request_latency_seconds{endpoint}``, the same
families a one-process pod exports from its own counters.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from handlers.metrics import ENDPOINTS, LATENCY_BUCKETS

_CODES = 600  # HTTP status codes index their own column


class SharedRequestMetrics(Collector):
    """Per-front request counters and latency histograms in shared memory; a Prometheus collector of their sum."""

    def __init__(self, fronts: int, *, endpoints: Sequence[str] = ENDPOINTS,
                 buckets: Sequence[float] = LATENCY_BUCKETS):
        self.endpoints = list(endpoints)
        self.buckets = list(buckets)
        self._row = {name: i for i, name in enumerate(self.endpoints)}
        context = mp.get_context("fork")
        shape = (fronts, len(self.endpoints))
        self._codes = _view(context.RawArray(ctypes.c_int64, fronts * len(self.endpoints) * _CODES),
                            np.int64, (*shape, _CODES))
        self._counts = _view(context.RawArray(ctypes.c_int64, fronts * len(self.endpoints) * (len(buckets) + 1)),
                             np.int64, (*shape, len(buckets) + 1))
        self._sums = _view(context.RawArray(ctypes.c_double, fronts * len(self.endpoints)), np.float64, shape)

    def record(self, front: int, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request of ``front`` (called only by that front)."""
        row = self._row[endpoint]
        self._codes[front, row, code if 0 <= code < _CODES else 0] += 1
        self._counts[front, row, bisect_left(self.buckets, seconds)] += 1
        self._sums[front, row] += seconds

    def collect(self) -> Iterator[Metric]:
        """The families summed over every front."""
        requests = CounterMetricFamily("pod_requests", "Requests answered, by endpoint and HTTP status code.",
                                       labels=["endpoint", "code"])
        latency = HistogramMetricFamily("pod_request_latency_seconds",
                                        "Time from request arrival to response, by endpoint.", labels=["endpoint"])
        codes, counts, sums = self._codes.sum(axis=0), self._counts.sum(axis=0), self._sums.sum(axis=0)
        edges = [*(floatToGoString(b) for b in self.buckets), "+Inf"]  # type: ignore[no-untyped-call]
        for row, endpoint in enumerate(self.endpoints):
            for code in np.flatnonzero(codes[row]):
                requests.add_metric([endpoint, str(code)], float(codes[row, code]))
            if counts[row].any():
                cumulative = np.cumsum(counts[row])
                latency.add_metric([endpoint], list(zip(edges, (float(c) for c in cumulative), strict=True)),
                                   float(sums[row]))
        yield requests
        yield latency


def _view(raw: Any, dtype: type, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
