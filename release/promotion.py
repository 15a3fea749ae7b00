"""Promotion: judging canary steps by what the candidate's own pods served.

A canary step sets the candidate's route weight (the router sends that share of PROD traffic to it), then
watches the candidate's own pods for a window: the error rate and p99 latency come from the pods' Prometheus
counters and histograms (deltas over the window), so what is judged is what clients really got. A breach
sets the weight back to 0 at once: the stable version never stopped serving, so nothing else has to move.
The decision per step is pure (``judge_step``); the steps themselves (weights, windows, progress) are run by
``release.canary`` for the controller, one short reconcile each, and the promoter never moves aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families

from release.ports import Candidate
from schemas.policy import CanaryStep, RolloutPolicy
from schemas.reports import CanaryStepResult

log = structlog.get_logger(__name__)

_REQUESTS = "pod_requests"
_LATENCY = "pod_request_latency_seconds"
_INFER_ENDPOINTS = frozenset({"infer", "predictions", "predict"})


@dataclass(frozen=True)
class PodCounters:
    """Cumulative inference counters of a version's pods at one moment."""

    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]

    def minus(self, earlier: PodCounters) -> PodCounters:
        """The counts between ``earlier`` and now."""
        before = dict(earlier.buckets)
        return PodCounters(requests=self.requests - earlier.requests, errors=self.errors - earlier.errors,
                           buckets=tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets))

    def to_json(self) -> dict[str, Any]:
        """The stored form (a canary step's snapshot)."""
        return {"requests": self.requests, "errors": self.errors, "buckets": [list(b) for b in self.buckets]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodCounters:
        """Back from the stored form; an empty one is zero counters."""
        return cls(requests=float(data.get("requests", 0.0)), errors=float(data.get("errors", 0.0)),
                   buckets=tuple((float(le), float(n)) for le, n in data.get("buckets", [])))

    def p99_ms(self) -> float | None:
        """The 99th percentile latency bucket bound, in ms (None with no requests)."""
        total = self.buckets[-1][1] if self.buckets else 0.0
        if total <= 0:
            return None
        for le, count in self.buckets:
            if count >= 0.99 * total:
                return le * 1000
        return None


def parse_counters(text: str) -> PodCounters:
    """Inference requests, 5xx errors and the latency histogram from a pod's /metrics text."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == _REQUESTS + "_total" and _is_infer(labels.get("endpoint", "")):
                requests += sample.value
                if labels.get("code", "").startswith("5"):
                    errors += sample.value
            elif sample.name == _LATENCY + "_bucket" and _is_infer(labels.get("endpoint", "")):
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return PodCounters(requests=requests, errors=errors, buckets=tuple(sorted(buckets.items())))


def _is_infer(endpoint: str) -> bool:
    return any(name in endpoint for name in _INFER_ENDPOINTS)


def judge_step(step: CanaryStep, window: PodCounters, rollout: RolloutPolicy) -> CanaryStepResult:
    """Whether a canary step stayed within its budgets (pure)."""
    rate = window.errors / window.requests if window.requests else 0.0
    p99 = window.p99_ms()
    enough = window.requests >= rollout.min_requests
    breaches = []
    if enough and rate > rollout.max_error_rate:
        breaches.append(f"error rate {rate:.3f} > {rollout.max_error_rate}")
    if enough and rollout.max_p99_ms is not None and p99 is not None and p99 > rollout.max_p99_ms:
        breaches.append(f"p99 {p99:.1f} ms > {rollout.max_p99_ms} ms")
    return CanaryStepResult(weight=step.weight, requests=window.requests, errors=window.errors, error_rate=rate,
                            p99_ms=p99, judged=enough, ok=not breaches, breaches=tuple(breaches))


class RoutePromoter:
    """``Promoter`` that reads the candidate's own pods: the controller sets the routes and keeps the steps."""

    def __init__(self) -> None:
        self._client = httpx.Client(timeout=5.0)

    def snapshot(self, candidate: Candidate) -> dict[str, Any]:
        """The pods' counters at a step's start, as stored with the step."""
        return self._scrape(candidate).to_json()

    def judge(self, candidate: Candidate, *, step: CanaryStep, snapshot: dict[str, Any],
              rollout: RolloutPolicy) -> CanaryStepResult:
        """What the pods served since ``snapshot``, judged against the budgets."""
        verdict = judge_step(step, self._scrape(candidate).minus(PodCounters.from_json(snapshot)), rollout)
        log.info("canary.step", weight=step.weight, requests=verdict.requests, error_rate=verdict.error_rate,
                 ok=verdict.ok)
        return verdict

    def _scrape(self, candidate: Candidate) -> PodCounters:
        total = PodCounters(0.0, 0.0, ())
        for endpoint in candidate.endpoints:
            try:
                text = self._client.get(f"{endpoint.rstrip('/')}/metrics").text
            except httpx.HTTPError as exc:
                log.warning("canary.scrape_failed", endpoint=endpoint, error=str(exc))
                continue
            counters = parse_counters(text)
            merged = dict(total.buckets)
            for le, n in counters.buckets:
                merged[le] = merged.get(le, 0.0) + n
            total = PodCounters(total.requests + counters.requests, total.errors + counters.errors,
                                tuple(sorted(merged.items())))
        return total
