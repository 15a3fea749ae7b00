"""Gate and promotion reports: the typed models read and write exactly the JSON the untyped dicts had."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.reports import CanaryStepResult, GateReport, GateResult, PromotionReport

GOLDEN = Path(__file__).parents[1] / "data" / "reports"


def golden(name: str) -> Any:
    """A golden report, captured from the dict-building code before the reports had types."""
    return json.loads((GOLDEN / name).read_text())


def _key_orders(value: Any) -> Any:
    """Every dict's keys in order, recursively: equal dicts may still differ in the order a reader sees."""
    if isinstance(value, dict):
        return [(k, _key_orders(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_key_orders(v) for v in value]
    return None


@pytest.mark.parametrize(("name", "model"), [("gate_report.json", GateReport),
                                              ("promotion_report.json", PromotionReport)])
def test_golden_report_round_trips_unchanged(name: str, model: type[GateReport | PromotionReport]) -> None:
    """Read into the model and dumped again, a golden report has the same keys, values and key order."""
    wire = golden(name)
    dumped = model.model_validate(wire).model_dump(mode="json")
    assert dumped == wire
    assert _key_orders(dumped) == _key_orders(wire)


def test_optional_keys_are_left_out_and_required_ones_kept_as_null() -> None:
    """A gate without detail/bound/baseline keys omits them; value and threshold stay even when null."""
    gate = GateResult(name="smoke", value=None, threshold=None, passed=True)
    assert gate.model_dump(mode="json") == {"name": "smoke", "value": None, "threshold": None, "passed": True}
    report = GateReport(passed=True, gates=(gate,), metrics={}, baseline_metrics=None, baseline_version=None,
                        latency=None)
    assert report.model_dump(mode="json") == {
        "passed": True, "gates": [gate.model_dump(mode="json")], "metrics": {}, "baseline_metrics": None,
        "baseline_version": None, "latency": None}


def test_a_promotion_without_traffic_shift_has_no_strategy_key() -> None:
    """A hand promotion's report keeps the old three-key shape; a direct flip names its strategy."""
    assert PromotionReport(ok=True, reason="promote").model_dump(mode="json") == {
        "ok": True, "steps": [], "reason": "promote"}
    assert PromotionReport.model_validate({"ok": True, "strategy": "direct", "steps": [], "reason": ""}) \
        .model_dump(mode="json") == {"ok": True, "strategy": "direct", "steps": [], "reason": ""}


def test_unknown_keys_are_refused() -> None:
    """A key the models do not know cannot ride along onto the wire."""
    wire = golden("gate_report.json")
    with pytest.raises(ValidationError):
        GateReport.model_validate({**wire, "surprise": 1})
    with pytest.raises(ValidationError):
        GateResult.model_validate({**wire["gates"][0], "surprise": 1})


def test_failed_gates_are_named_in_report_order() -> None:
    """``failed_gates`` lists what did not hold, as the rejection reason shows it."""
    report = GateReport.model_validate(golden("gate_report.json"))
    assert report.failed_gates() == ["metric:accuracy", "metric:auc", "regression:accuracy"]


def test_reports_are_immutable() -> None:
    """A report is a decision already taken: its fields cannot be reassigned."""
    step = CanaryStepResult(weight=10, requests=1.0, errors=0.0, error_rate=0.0, p99_ms=None, judged=False,
                            ok=True, breaches=())
    with pytest.raises(ValidationError):
        step.ok = False  # type: ignore[misc]
