"""Gates: metric computations against scikit-learn, and the pure judge over every kind of gate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, roc_auc_score, top_k_accuracy_score

from release.gates import binary_auc, classification_metrics, judge, regression_metrics, smoke_input
from schemas.manifest import Manifest
from schemas.policy import GatePolicy, LatencyGate, MetricGate, RegressionGate
from schemas.reports import GateReport, GateResult, LatencyMeasurement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_scikit_learn(seed: int) -> None:
    """Accuracy, macro-F1 and top-k equal scikit-learn's on random scores."""
    rng = np.random.default_rng(seed)
    scores = rng.random((300, 6))
    y = rng.integers(0, 6, 300)
    got = classification_metrics(scores, y)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, scores.argmax(1)), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(y, scores.argmax(1), average="macro"), abs=1e-12)
    for k in (2, 3, 5):
        assert got[f"top_{k}"] == pytest.approx(top_k_accuracy_score(y, scores, k=k, labels=range(6)), abs=1e-12)


def test_binary_auc_matches_scikit_learn_with_ties() -> None:
    """The rank-sum AUC with averaged ties equals roc_auc_score."""
    rng = np.random.default_rng(3)
    score = rng.integers(0, 10, 500).astype(float)  # many ties
    y = rng.integers(0, 2, 500)
    assert binary_auc(score, y) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert classification_metrics(np.stack([1 - score / 10, score / 10], 1), y)["auc"] == pytest.approx(
        roc_auc_score(y, score), abs=1e-12)


def test_regression_metrics() -> None:
    """MAE and RMSE of predictions against targets."""
    pred, y = np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 3.0, 2.0])
    got = regression_metrics(pred, y)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred[:, 0]))
    assert got["rmse"] == pytest.approx(np.sqrt(5 / 3))


POLICY = GatePolicy(metrics=[MetricGate(metric="accuracy", min=0.8), MetricGate(metric="rmse", max=1.0)],
                    regression=[RegressionGate(metric="accuracy", max_drop=0.01),
                                RegressionGate(metric="rmse", max_drop=0.1)],
                    latency=LatencyGate(p50_ms=10, p95_ms=None, p99_ms=50, max_error_rate=0.01))
LATENCY_OK = LatencyMeasurement(p50_ms=5.0, p95_ms=9.0, p99_ms=20.0, error_rate=0.0, requests=40.0, concurrency=2.0)


def _names(report: GateReport, passed: bool) -> set[str]:
    return {g.name for g in report.gates if g.passed is passed}


def test_judge_passes_when_every_gate_holds() -> None:
    """Metrics in bounds, no regression, latency and errors within budget: passed."""
    report = judge(POLICY, metrics={"accuracy": 0.9, "rmse": 0.5}, baseline={"accuracy": 0.905, "rmse": 0.45},
                   baseline_version="1", latency=LATENCY_OK, smoke=None, custom=[])
    assert report.passed and _names(report, False) == set()
    assert _names(report, True) == {"metric:accuracy", "metric:rmse", "regression:accuracy", "regression:rmse",
                                    "latency:p50_ms", "latency:p99_ms", "error_rate"}


@pytest.mark.parametrize(("metrics", "baseline", "latency", "failing"), [
    ({"accuracy": 0.7, "rmse": 0.5}, None, LATENCY_OK, {"metric:accuracy"}),
    ({"accuracy": 0.9, "rmse": 1.5}, None, LATENCY_OK, {"metric:rmse"}),
    ({"accuracy": 0.9, "rmse": 0.5}, {"accuracy": 0.95, "rmse": 0.5}, LATENCY_OK, {"regression:accuracy"}),
    ({"accuracy": 0.9, "rmse": 0.7}, {"accuracy": 0.9, "rmse": 0.5}, LATENCY_OK, {"regression:rmse"}),
    ({"accuracy": 0.9, "rmse": 0.5}, None, LATENCY_OK.model_copy(update={"p99_ms": 60.0}), {"latency:p99_ms"}),
    ({"accuracy": 0.9, "rmse": 0.5}, None, LATENCY_OK.model_copy(update={"error_rate": 0.02}), {"error_rate"}),
])
def test_judge_names_the_failing_gate(metrics, baseline, latency, failing) -> None:
    """Each kind of breach fails exactly its own gate, and the report says which."""
    report = judge(POLICY, metrics=metrics, baseline=baseline, baseline_version="1" if baseline else None,
                   latency=latency, smoke=None, custom=[])
    assert not report.passed and _names(report, False) == failing
    assert report.failed_gates() == sorted(failing)


def test_missing_metric_fails_its_gate_with_a_reason() -> None:
    """A threshold on a metric the model's outputs cannot give fails rather than passing silently."""
    report = judge(GatePolicy(metrics=[MetricGate(metric="auc", min=0.5)], regression=[], latency=None),
                   metrics={"accuracy": 1.0}, baseline=None, baseline_version=None, latency=None, smoke=None,
                   custom=[])
    (gate,) = report.gates
    assert not report.passed and gate.detail is not None and "not computable" in gate.detail


def test_smoke_and_custom_gates_count() -> None:
    """Without an eval set the smoke gate decides; a failing custom gate fails the report."""
    policy = GatePolicy(metrics=[], regression=[], latency=None)
    ok = judge(policy, metrics=None, baseline=None, baseline_version=None, latency=None,
               smoke={"ok": True, "detail": ""}, custom=[])
    bad = judge(policy, metrics=None, baseline=None, baseline_version=None, latency=None,
                smoke={"ok": True, "detail": ""},
                custom=[GateResult(name="custom:fair", value=None, threshold=None, passed=False)])
    assert ok.passed and not bad.passed


def test_no_gates_at_all_is_not_a_pass() -> None:
    """An empty report never promotes a version."""
    report = judge(GatePolicy(metrics=[], regression=[], latency=None), metrics=None, baseline=None,
                   baseline_version=None, latency=None, smoke=None, custom=[])
    assert not report.passed


def test_smoke_input_follows_the_declared_signature() -> None:
    """-1 dimensions become 1 and the dtype follows the OIP datatype."""
    manifest = Manifest.model_validate({
        "name": "m", "version": "1", "format": "torchscript", "handler": "tabular",
        "files": {"model.pt": {"sha256": "0" * 64, "size": 1}},
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]})
    x = smoke_input(manifest)
    assert x.shape == (1, 3) and x.dtype == np.int64


def _plugin(tmp_path, monkeypatch, body: str) -> None:  # type: ignore[no-untyped-def]
    """Install a custom gate the way a package would: a module plus an entry point in its dist-info."""
    module = f"gates_{tmp_path.name.replace('-', '_')}"  # a fresh module name: imports are cached per process
    (tmp_path / f"{module}.py").write_text(body)
    info = tmp_path / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[modelrelease.gates]\nfair = {module}:check\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def _candidate():  # type: ignore[no-untyped-def]
    from release.ports import Candidate

    return Candidate(model="m", version="2", version_id=1, manifest={}, endpoints=())


def test_custom_gate_from_an_entry_point_reports_like_the_others(tmp_path, monkeypatch) -> None:
    """A plugin registered under modelrelease.gates runs with the candidate and lands in the report."""
    from release.gates import HttpGateRunner
    from schemas.policy import ReleasePolicy

    _plugin(tmp_path, monkeypatch, "def check(*, candidate, baseline, policy):\n"
                                   "    return {'passed': candidate.version == '2', 'value': 0.97, 'threshold': 0.9}\n")
    gate = HttpGateRunner()._custom("fair", _candidate(), None, ReleasePolicy())
    assert gate.model_dump(mode="json") == {"name": "custom:fair", "value": 0.97, "threshold": 0.9, "passed": True,
                                            "detail": ""}
    missing = HttpGateRunner()._custom("absent", _candidate(), None, ReleasePolicy())
    assert not missing.passed and "no 'modelrelease.gates' entry point" in str(missing.detail)


def test_a_crashing_custom_gate_fails_its_gate_only(tmp_path, monkeypatch) -> None:
    """An exception inside a plugin fails that gate with the error, never the controller."""
    from release.gates import HttpGateRunner
    from schemas.policy import ReleasePolicy

    _plugin(tmp_path, monkeypatch, "def check(**_):\n    raise RuntimeError('fairness data missing')\n")
    gate = HttpGateRunner()._custom("fair", _candidate(), None, ReleasePolicy())
    assert not gate.passed and gate.detail == "RuntimeError: fairness data missing"


def test_a_custom_gate_returning_a_non_number_fails_its_gate_only(tmp_path, monkeypatch) -> None:
    """A plugin whose value is not a number fails that gate with the validation error instead of the report."""
    from release.gates import HttpGateRunner
    from schemas.policy import ReleasePolicy

    _plugin(tmp_path, monkeypatch, "def check(**_):\n    return {'passed': True, 'value': 'high'}\n")
    gate = HttpGateRunner()._custom("fair", _candidate(), None, ReleasePolicy())
    assert not gate.passed and gate.value is None and "ValidationError" in str(gate.detail)


def test_judge_writes_the_golden_report() -> None:
    """Every kind of gate, judged and then stamped like the runner does, dumps to the golden captured from the dicts."""
    import json
    from pathlib import Path

    policy = GatePolicy(metrics=[MetricGate(metric="accuracy", min=0.8), MetricGate(metric="rmse", max=1.0),
                                 MetricGate(metric="auc", min=0.5)],
                        regression=[RegressionGate(metric="accuracy", max_drop=0.01),
                                    RegressionGate(metric="rmse", max_drop=0.1)],
                        latency=LatencyGate(p50_ms=10, p95_ms=None, p99_ms=50, max_error_rate=0.01),
                        custom=["fair"])
    report = judge(policy, metrics={"accuracy": 0.75, "rmse": 0.5}, baseline={"accuracy": 0.9, "rmse": 0.45},
                   baseline_version="1", latency=LATENCY_OK,
                   smoke={"ok": True, "detail": "output shape [1, 10], declared [-1, 10]"},
                   custom=[GateResult(name="custom:fair", value=0.97, threshold=0.9, passed=True, detail="")])
    stamped = report.model_copy(update={"timings": {"quality_s": 0.5, "latency_s": 1.25, "total_s": 2.0},
                                        "version": "2"})
    golden = json.loads((Path(__file__).parents[1] / "data" / "reports" / "gate_report.json").read_text())
    assert stamped.model_dump(mode="json") == golden
    assert "timings" not in report.model_dump(mode="json") and "version" not in report.model_dump(mode="json")
