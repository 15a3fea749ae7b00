"""Gate and promotion reports: what the gates and the canary decided, typed from the port to storage.

They travel as these models through ``GateRunner.evaluate`` and ``Promoter.shift``. On the wire (the
``gate_report`` table, ``gates.evaluated`` events, ``release show --json``) a report is its
``model_dump(mode="json")``, which keeps the shape the untyped dicts had: a key typed ``OmittedWhenNone`` exists
only for some gates or some runners and is left out rather than written as null; every other key is always
there, null included. ``tests/schemas/test_reports.py`` pins that shape against the golden files in
``tests/data/reports/``.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.policy import Strategy

_T = TypeVar("_T")


def _is_none(value: object) -> bool:
    return value is None


#: A key that only some reports carry: absent from the JSON when it holds None (as the dicts left it out).
OmittedWhenNone = Annotated[_T | None, Field(exclude_if=_is_none)]


class _Report(BaseModel):
    # Frozen: a report is a decision already taken. Unknown keys are refused so that nothing untyped slips onto
    # the wire past these models.
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateResult(_Report):
    """One gate's verdict: what was measured, against which threshold, and whether it held.

    ``name`` says the kind: ``metric:M``, ``regression:M``, ``latency:pNN_ms``, ``error_rate``, ``smoke`` or
    ``custom:NAME``. The optional keys belong to some kinds only.
    """

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: OmittedWhenNone[str] = None
    #: Metric gates: whether ``threshold`` is a minimum or a maximum.
    bound: OmittedWhenNone[Literal["min", "max"]] = None
    #: Regression gates: the PROD version's value of the metric, measured in the same run.
    baseline: OmittedWhenNone[float] = None
    baseline_version: OmittedWhenNone[str] = None
    drop: OmittedWhenNone[float] = None
    max_drop: OmittedWhenNone[float] = None


class LatencyMeasurement(_Report):
    """Latency percentiles and error rate of the staged pods under a short closed-loop load."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_rate: float
    requests: float
    concurrency: float


class GateReport(_Report):
    """Every gate a version was judged on, the measurements behind them, and the verdict."""

    passed: bool
    gates: tuple[GateResult, ...]
    metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    baseline_version: str | None
    latency: LatencyMeasurement | None
    #: Seconds spent per measuring phase; set by the runner that measured, not by the pure judge.
    timings: OmittedWhenNone[dict[str, float]] = None
    version: OmittedWhenNone[str] = None

    def failed_gates(self) -> list[str]:
        """Names of the gates that did not hold, in report order."""
        return [gate.name for gate in self.gates if not gate.passed]


class CanaryStepResult(_Report):
    """One canary step: the traffic share it ran at, what the candidate's pods served meanwhile, the verdict."""

    weight: int
    requests: float
    errors: float
    error_rate: float
    p99_ms: float | None
    #: False when the window saw fewer requests than the policy's minimum: the step passes unjudged.
    judged: bool
    ok: bool
    breaches: tuple[str, ...]


class PromotionReport(_Report):
    """How traffic moved to a version: the strategy, each canary step, and why it stopped if it did."""

    ok: bool
    #: Absent when no traffic was shifted at all (a person promoted, or a rollback restored, a proven version).
    strategy: OmittedWhenNone[Strategy] = None
    steps: tuple[CanaryStepResult, ...] = ()
    reason: str = ""
