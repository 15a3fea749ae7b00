"""Quality gates, evaluated through real requests to the staged pods.

Measuring (``measure_*``: I/O against pods) is kept apart from judging (``judge``: pure, exhaustively unit
tested): the measurements and the policy go in, an immutable gate report comes out. Gates:

- metrics on the manifest's eval set (accuracy, macro-F1, top-k, AUC for binary tasks, MAE/RMSE), per threshold;
- no regression against the current PROD, both measured on the same eval set in the same run;
- latency p50/p95/p99 and error rate under a short closed-loop load;
- a smoke gate for artifacts without an eval set (outputs match the declared signature, no errors);
- custom gates from the ``modelrelease.gates`` entry point group, returning ``{"passed", "value", "threshold",
  "detail"}``, which becomes one ``GateResult`` like the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import structlog

from release.ports import Candidate
from release.samples import read_sample
from schemas.errors import PermanentError, Reason, TemporaryError
from schemas.manifest import Manifest
from schemas.policy import GatePolicy, LatencyGate, MetricGate, RegressionGate, ReleasePolicy
from schemas.reports import GateReport, GateResult, LatencyMeasurement

log = structlog.get_logger(__name__)

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
           "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
_LOWER_IS_BETTER = frozenset({"mae", "rmse"})
CUSTOM_GROUP = "modelrelease.gates"
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ metrics
def classification_metrics(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, top-k and (for two classes) AUC from class scores [n, k] and labels [n]."""
    y = y.astype(np.int64).reshape(-1)
    pred = scores.argmax(axis=1)
    k = scores.shape[1]
    out = {"accuracy": float((pred == y).mean())}
    f1s = []
    for c in range(k):
        tp = float(((pred == c) & (y == c)).sum())
        fp = float(((pred == c) & (y != c)).sum())
        fn = float(((pred != c) & (y == c)).sum())
        if tp + fp + fn > 0:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    out["macro_f1"] = float(np.mean(f1s)) if f1s else 0.0
    ranked = np.argsort(-scores, axis=1)
    for top in (2, 3, 5):
        if top < k:
            out[f"top_{top}"] = float((ranked[:, :top] == y[:, None]).any(axis=1).mean())
    if k == 2:
        out["auc"] = binary_auc(scores[:, 1], y)
    return out


def binary_auc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties averaged."""
    positives = y == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """MAE and RMSE."""
    err = pred.reshape(len(y), -1)[:, 0] - y.reshape(-1)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}


def percentile_ms(latencies_s: list[float], q: float) -> float:
    """The q-th percentile of latencies, in milliseconds."""
    return float(np.percentile(np.asarray(latencies_s) * 1000, q)) if latencies_s else float("nan")


# ------------------------------------------------------------------------------------------------ judging
def _bounded(rule: MetricGate, value: float | None) -> GateResult:
    name, threshold = f"metric:{rule.metric}", rule.min if rule.min is not None else rule.max
    if value is None:
        return GateResult(name=name, value=None, threshold=threshold, passed=False,
                          detail="metric not computable for this model's outputs")
    ok = (rule.min is None or value >= rule.min) and (rule.max is None or value <= rule.max)
    return GateResult(name=name, value=value, threshold=threshold, passed=ok,
                      bound="min" if rule.min is not None else "max")


def _regression(rule: RegressionGate, new: float, old: float, baseline_version: str | None) -> GateResult:
    lower_is_better = rule.metric in _LOWER_IS_BETTER
    drop = (new - old) if lower_is_better else (old - new)
    return GateResult(name=f"regression:{rule.metric}", value=new,
                      threshold=old + rule.max_drop if lower_is_better else old - rule.max_drop,
                      passed=drop <= rule.max_drop + 1e-12, baseline=old, baseline_version=baseline_version,
                      drop=drop, max_drop=rule.max_drop)


def _latency(budget: LatencyGate, latency: LatencyMeasurement) -> list[GateResult]:
    gates = [GateResult(name=f"latency:{q}_ms", value=value, threshold=limit, passed=value <= limit)
             for q, value, limit in (("p50", latency.p50_ms, budget.p50_ms), ("p95", latency.p95_ms, budget.p95_ms),
                                     ("p99", latency.p99_ms, budget.p99_ms)) if limit is not None]
    gates.append(GateResult(name="error_rate", value=latency.error_rate, threshold=budget.max_error_rate,
                            passed=latency.error_rate <= budget.max_error_rate))
    return gates


def judge(policy: GatePolicy, *, metrics: dict[str, float] | None, baseline: dict[str, float] | None,
          baseline_version: str | None, latency: LatencyMeasurement | None, smoke: dict[str, Any] | None,
          custom: list[GateResult]) -> GateReport:
    """The gate report for these measurements under ``policy`` (pure)."""
    gates: list[GateResult] = []
    if metrics is not None:
        gates += [_bounded(rule, metrics.get(rule.metric)) for rule in policy.metrics]
        if baseline is not None:
            for reg in policy.regression:
                new, old = metrics.get(reg.metric), baseline.get(reg.metric)
                if new is not None and old is not None:
                    gates.append(_regression(reg, new, old, baseline_version))
    if smoke is not None:
        gates.append(GateResult(name="smoke", value=None, threshold=None, passed=bool(smoke.get("ok")),
                                detail=smoke.get("detail", "")))
    if latency is not None and policy.latency is not None:
        gates += _latency(policy.latency, latency)
    gates += custom
    return GateReport(passed=bool(gates) and all(g.passed for g in gates), gates=tuple(gates),
                      metrics=metrics or {}, baseline_metrics=baseline, baseline_version=baseline_version,
                      latency=latency)


# ------------------------------------------------------------------------------------------------ measuring
class PodClient:
    """Open Inference Protocol requests to one version's pods (round robin)."""

    def __init__(self, candidate: Candidate, *, timeout_s: float = 30.0) -> None:
        if not candidate.endpoints:
            raise TemporaryError(f"{candidate.model}/{candidate.version} has no ready endpoints yet")
        self._candidate = candidate
        self._manifest = Manifest.model_validate(candidate.manifest)
        self._client = httpx.Client(timeout=timeout_s)
        self._next = 0

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns the first output as an array shaped [batch, ...]."""
        spec = self._manifest.inputs[0]
        body = {"inputs": [{"name": spec.name, "datatype": spec.datatype.value, "shape": list(x.shape),
                            "data": x.reshape(-1).tolist()}]}
        endpoint = self._candidate.endpoints[self._next % len(self._candidate.endpoints)]
        self._next += 1
        url = f"{endpoint.rstrip('/')}/v2/models/{self._candidate.model}/infer"
        try:
            response = self._client.post(url, json=body)
        except httpx.TransportError as exc:
            raise TemporaryError(f"staged pod unreachable at {endpoint}: {exc}") from exc
        if response.status_code >= 400:
            raise PermanentError(f"{self._candidate.model}/{self._candidate.version} answered "
                                 f"{response.status_code}: {response.text[:300]}", reason=Reason.HANDLER_ERROR)
        output = response.json()["outputs"][0]
        return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


def load_eval(candidate: Candidate) -> tuple[np.ndarray, np.ndarray] | None:
    """The eval set (x, y) of the candidate's artifact (a folder or a ``.mar``), if it names one."""
    manifest = Manifest.model_validate(candidate.manifest)
    if manifest.eval is None or candidate.local_path is None:
        return None
    # Capped: the npz comes from the untrusted bucket (intake checked its headers; this is the second look).
    data = read_sample(Path(candidate.local_path), manifest.eval)
    if "x" not in data or "y" not in data:
        raise PermanentError(f"{manifest.eval} needs arrays 'x' and 'y', it has {sorted(data)}",
                             reason=Reason.SAMPLE_INVALID, hint="Save the eval set with numpy.savez(f, x=..., y=...).")
    return data["x"], data["y"]


def measure_quality(client: PodClient, x: np.ndarray, y: np.ndarray, *, batch_size: int,
                    dtype: Any) -> dict[str, float]:
    """Metrics of the pods' predictions on the eval set."""
    outputs = [client.infer(x[i:i + batch_size].astype(dtype)) for i in range(0, len(x), batch_size)]
    scores = np.concatenate(outputs, axis=0)
    if np.issubdtype(y.dtype, np.integer) and scores.ndim == 2 and scores.shape[1] > 1:
        return classification_metrics(scores, y)
    return regression_metrics(scores, y.astype(np.float64))


def measure_latency(client_factory: Callable[[], PodClient], rows: np.ndarray, *,
                    budget: LatencyGate) -> LatencyMeasurement:
    """Closed-loop load at ``budget.concurrency``: single-row requests, latency percentiles and error rate."""
    latencies: list[float] = []
    errors = 0

    def worker(count: int) -> tuple[list[float], int]:
        client = client_factory()
        own, failed = [], 0
        try:
            for i in range(count):
                started = time.perf_counter()
                try:
                    client.infer(rows[i % len(rows)][None, ...])
                except (PermanentError, TemporaryError):
                    failed += 1
                own.append(time.perf_counter() - started)
        finally:
            client.close()
        return own, failed

    per_worker = [budget.requests // budget.concurrency + (1 if i < budget.requests % budget.concurrency else 0)
                  for i in range(budget.concurrency)]
    with ThreadPoolExecutor(max_workers=budget.concurrency) as pool:
        for own, failed in pool.map(worker, per_worker):
            latencies += own
            errors += failed
    return LatencyMeasurement(p50_ms=percentile_ms(latencies, 50), p95_ms=percentile_ms(latencies, 95),
                              p99_ms=percentile_ms(latencies, 99), error_rate=errors / max(len(latencies), 1),
                              requests=float(len(latencies)), concurrency=float(budget.concurrency))


def _timed(timings: dict[str, float], name: str, measure: Callable[[], T]) -> T:
    """``measure()``, its wall time recorded under ``timings[name]``."""
    started = time.monotonic()
    try:
        return measure()
    finally:
        timings[name] = time.monotonic() - started


def smoke_input(manifest: Manifest) -> np.ndarray:
    """A one-row zero input matching the declared input signature."""
    spec = manifest.inputs[0]
    shape = [1 if d == -1 else d for d in spec.shape] or [1]
    return np.zeros(shape, dtype=_DTYPES.get(spec.datatype.value, np.float32))


class HttpGateRunner:
    """``GateRunner`` that measures through HTTP and judges with ``judge``.

    The latency load and the quality pass (candidate, then baseline) run at the same time: each is judged as
    before, and the load's percentiles include whatever the quality pass costs the pods, so overlapping can only
    make the latency gate harder to pass, never easier.
    """

    def evaluate(self, candidate: Candidate, *, baseline: Candidate | None,
                 policy: ReleasePolicy) -> GateReport:
        """Measure the candidate (and the baseline on the same eval set), then judge."""
        started = time.monotonic()
        gp = policy.gates
        manifest = Manifest.model_validate(candidate.manifest)
        dtype = _DTYPES.get(manifest.inputs[0].datatype.value, np.float32)
        client = PodClient(candidate)
        timings: dict[str, float] = {}
        try:
            eval_set = load_eval(candidate)
            rows = eval_set[0].astype(dtype) if eval_set is not None else smoke_input(manifest)
            budget = gp.latency
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="latency-gate") as load:
                pending = None if budget is None else load.submit(
                    _timed, timings, "latency_s",
                    lambda: measure_latency(lambda: PodClient(candidate), rows, budget=budget))
                metrics, base_metrics = self._quality(client, eval_set, baseline, gp, dtype, timings)
                smoke = self._smoke(client, manifest) if eval_set is None or gp.smoke else None
                latency = None if pending is None else pending.result()
        finally:
            client.close()
        custom = [self._custom(name, candidate, baseline, policy) for name in gp.custom]
        report = judge(gp, metrics=metrics, baseline=base_metrics,
                       baseline_version=baseline.version if baseline else None, latency=latency, smoke=smoke,
                       custom=custom)
        timings["total_s"] = time.monotonic() - started
        report = report.model_copy(update={"timings": {k: round(v, 3) for k, v in timings.items()},
                                           "version": candidate.version})
        log.info("gates.evaluated", passed=report.passed, metrics=report.metrics)
        return report

    def _quality(self, client: PodClient, eval_set: tuple[np.ndarray, np.ndarray] | None,
                 baseline: Candidate | None, gp: GatePolicy, dtype: Any,
                 timings: dict[str, float]) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        """The candidate's metrics on the eval set, and the baseline's (None when it cannot be measured)."""
        if eval_set is None:
            return None, None
        x, y = eval_set
        metrics = _timed(timings, "quality_s",
                         lambda: measure_quality(client, x, y, batch_size=gp.batch_size, dtype=dtype))
        if baseline is None or not baseline.endpoints:
            return metrics, None
        base_client = PodClient(baseline)
        try:
            return metrics, measure_quality(base_client, x, y, batch_size=gp.batch_size, dtype=dtype)
        except (TemporaryError, PermanentError) as error:
            log.warning("gates.baseline_failed", baseline=baseline.version, error=str(error))
            return metrics, None
        finally:
            base_client.close()

    def _smoke(self, client: PodClient, manifest: Manifest) -> dict[str, Any]:
        try:
            out = client.infer(smoke_input(manifest))
        except (PermanentError, TemporaryError) as error:
            return {"ok": False, "detail": str(error)}
        expected = manifest.outputs[0].shape
        ok = len(out.shape) == len(expected) and all(e in (-1, a) for e, a in zip(expected, out.shape, strict=True))
        return {"ok": ok, "detail": f"output shape {list(out.shape)}, declared {expected}"}

    def _custom(self, name: str, candidate: Candidate, baseline: Candidate | None,
                policy: ReleasePolicy) -> GateResult:
        found = [ep for ep in entry_points(group=CUSTOM_GROUP) if ep.name == name]
        if not found:
            return GateResult(name=f"custom:{name}", value=None, threshold=None, passed=False,
                              detail=f"no '{CUSTOM_GROUP}' entry point named {name}")
        try:
            result = dict(found[0].load()(candidate=candidate, baseline=baseline, policy=policy))
            # Built inside the try: a plugin returning a value that is not a number fails its own gate only.
            return GateResult(name=f"custom:{name}", value=result.get("value"), threshold=result.get("threshold"),
                              passed=bool(result.get("passed")), detail=str(result.get("detail", "")))
        except Exception as exc:
            return GateResult(name=f"custom:{name}", value=None, threshold=None, passed=False,
                              detail=f"{type(exc).__name__}: {exc}")
