"""What both halves of the registry benchmark share: the data layout, the operations' names and the timing.

Standard library only, because it is imported by our side (the project venv) and by the MLflow side (its own
venv). Each side implements the same named operations against its registry; this module times them the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OPS_MODEL = "bench-ops"
ALIAS = "PROD"
TEXT = "m4"  # matches m4 and m40..m49: 11 of the 100 models
WARMUP = 3

# The listing queries, in report order: (key, what it does, the MLflow call used for it).
QUERIES: list[tuple[str, str, str]] = [
    ("list_one", "all versions of one model (100 rows)", "search_model_versions(\"name='m42'\")"),
    ("page_newest", "newest-first page of 20 of one model", "same, max_results=20, order_by version_number DESC"),
    ("walk_pages", "walk one model in 5 pages of 20", "same, following page_token"),
    ("search_text", "text search across models, newest 100", "search_model_versions(\"name LIKE '%m4%'\", 100)"),
    ("list_models", "every model with count/latest/aliases", "search_registered_models(max_results=100)"),
]


def model_name(index: int) -> str:
    """The i-th listing model: m0..m99, so ``name='m42'`` exists as in the issue."""
    return f"m{index}"


@dataclass(frozen=True)
class Layout:
    """How the listing data set is shaped: ``per_model`` versions of each of ``models`` models."""

    models: int
    per_model: int

    @property
    def total(self) -> int:
        return self.models * self.per_model

    def rounds(self) -> list[list[str]]:
        """Creation order: round r registers version r+1 of every model, so the versions interleave."""
        return [[model_name(i) for i in range(self.models)] for _ in range(self.per_model)]


def summarise(samples: list[float], *, wall_s: float | None = None) -> dict[str, Any]:
    """Latency percentiles in ms and sequential throughput in calls/s from per-call seconds."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    total = wall_s if wall_s is not None else sum(samples)
    return {"n": len(samples), "p50_ms": round(cuts[49] * 1000, 3), "p99_ms": round(cuts[98] * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3), "per_s": round(len(samples) / total, 1) if total else None}


def time_calls(call: Callable[[int], object], n: int, *, deadline: float, warmup: int = 0) -> dict[str, Any]:
    """Run ``call(i)`` ``warmup`` times untimed, then ``n`` times timed one after another (or until ``deadline``)."""
    for i in range(warmup):
        call(i)
    samples: list[float] = []
    started = time.perf_counter()
    for i in range(warmup, warmup + n):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
    return summarise(samples, wall_s=time.perf_counter() - started)


def expect(got: int, want: int, what: str) -> None:
    """Fail loudly when a query returns a different number of rows than the other side must return too."""
    if got != want:
        raise AssertionError(f"{what}: got {got} rows, expected {want}")
