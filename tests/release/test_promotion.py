"""Canary judgement from the candidate pods' own Prometheus counters."""

from __future__ import annotations

from release.promotion import PodCounters, judge_step, parse_counters
from schemas.policy import CanaryStep, RolloutPolicy

METRICS = """# HELP pod_requests_total Requests answered
# TYPE pod_requests_total counter
pod_requests_total{endpoint="infer",code="200"} 90.0
pod_requests_total{endpoint="infer",code="500"} 10.0
pod_requests_total{endpoint="metrics",code="200"} 7.0
# HELP pod_request_latency_seconds Latency
# TYPE pod_request_latency_seconds histogram
pod_request_latency_seconds_bucket{endpoint="infer",le="0.01"} 50.0
pod_request_latency_seconds_bucket{endpoint="infer",le="0.1"} 98.0
pod_request_latency_seconds_bucket{endpoint="infer",le="1.0"} 100.0
pod_request_latency_seconds_bucket{endpoint="infer",le="+Inf"} 100.0
pod_request_latency_seconds_count{endpoint="infer"} 100.0
pod_request_latency_seconds_sum{endpoint="infer"} 3.0
"""


def test_parse_counts_only_inference_endpoints() -> None:
    """Requests and 5xx come from inference endpoints only; scrapes of /metrics do not count."""
    counters = parse_counters(METRICS)
    assert (counters.requests, counters.errors) == (100.0, 10.0)
    assert counters.p99_ms() == 1000.0


def test_window_is_the_delta_between_scrapes() -> None:
    """A step is judged on what happened during its window, not on the pod's lifetime totals."""
    before = PodCounters(40.0, 0.0, ((0.01, 30.0), (0.1, 40.0), (float("inf"), 40.0)))
    window = parse_counters(METRICS).minus(before)
    assert (window.requests, window.errors) == (60.0, 10.0)


def test_breach_of_error_budget_fails_the_step() -> None:
    """An error rate above the budget with enough requests aborts the canary, naming the breach."""
    verdict = judge_step(CanaryStep(weight=10), PodCounters(100.0, 5.0, ()),
                         RolloutPolicy(max_error_rate=0.01, min_requests=20))
    assert not verdict.ok and verdict.breaches == ("error rate 0.050 > 0.01",)


def test_latency_budget_and_too_little_traffic() -> None:
    """p99 over budget fails; with fewer requests than min_requests nothing is judged."""
    slow = PodCounters(100.0, 0.0, ((0.01, 10.0), (0.5, 100.0), (float("inf"), 100.0)))
    assert not judge_step(CanaryStep(weight=50), slow, RolloutPolicy(max_p99_ms=100, min_requests=20)).ok
    quiet = PodCounters(5.0, 5.0, ())
    verdict = judge_step(CanaryStep(weight=50), quiet, RolloutPolicy(min_requests=20))
    assert verdict.ok and not verdict.judged


def test_an_aborted_canary_reports_the_golden_shape() -> None:
    """Steps judged from pod counters, in an aborted canary's report, dump to the golden captured from the dicts."""
    import json
    from pathlib import Path

    from schemas.policy import Strategy
    from schemas.reports import PromotionReport

    rollout = RolloutPolicy(max_error_rate=0.01, min_requests=20)
    buckets = ((0.01, 50.0), (0.1, 100.0))
    steps = (judge_step(CanaryStep(weight=10), PodCounters(100.0, 0.0, buckets), rollout),
             judge_step(CanaryStep(weight=50), PodCounters(100.0, 5.0, buckets), rollout))
    report = PromotionReport(ok=False, strategy=Strategy.CANARY, steps=steps,
                             reason=f"step 50%: {'; '.join(steps[1].breaches)}")
    golden = json.loads((Path(__file__).parents[1] / "data" / "reports" / "promotion_report.json").read_text())
    assert report.model_dump(mode="json") == golden
