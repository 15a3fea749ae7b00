"""When drift numbers become an alert: a pure, persisted state machine per model version.

A window counts as drifting only when a difference is both significant (corrected p-value below alpha) and
large (PSI, normalised Wasserstein distance, or JS distance above a threshold). Significance alone is not
enough: with thousands of records every p-value is tiny, which is why p-value-only monitors cry wolf.

Nominal false-alarm rate: on drift-free data a window is marked drifting with probability at most
``policy.alpha``. The features' KS tests are one family (corrected across features, Benjamini-Hochberg by
default: under no drift at all this bounds the family's false positives by alpha), the class chi-square test
is the other; when both are present each gets alpha / 2 (Bonferroni across the two), so the union stays at
alpha. The effect-size thresholds and the ``consecutive_windows`` rule only lower the rate further.

``step`` never does I/O: it returns the new state and the actions; the monitor publishes and persists.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import EventType
from schemas.policy import DriftPolicy
from schemas.predictions import AlertKind, DriftAlertData, DriftMeasurement, Severity

# The policy has no Wasserstein fields yet; these are in units of the reference standard deviation and
# sit at the same "moderate / large shift" levels as the PSI defaults (0.1 / 0.25).
WASSERSTEIN_WARNING = 0.1
WASSERSTEIN_CRITICAL = 0.25
# Reasons are for people; an alert on a 500-feature embedding should still be readable.
MAX_REASONS = 10


class AlertState(BaseModel):
    """What the monitor remembers between windows of one model version (store it with ``model_dump``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: str
    severity: Severity = Severity.NONE
    alert_id: str | None = None
    warning_streak: int = Field(default=0, ge=0)
    critical_streak: int = Field(default=0, ge=0)
    clean_streak: int = Field(default=0, ge=0)
    last_window: int | None = None


@dataclass(frozen=True)
class Verdict:
    """How one window looks on its own: its severity and the findings behind it."""

    severity: Severity
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class AlertAction:
    """One thing the monitor must publish: an alert fired, escalated or resolved."""

    alert: DriftAlertData

    @property
    def event_type(self) -> EventType:
        """``drift.alert`` for fired and escalated alerts, ``drift.resolved`` for resolved ones."""
        return EventType.DRIFT_RESOLVED if self.alert.kind is AlertKind.RESOLVED else EventType.DRIFT_ALERT

    @property
    def event_id(self) -> str:
        """Deterministic, so a step retried after a crash publishes the same event and consumers de-dup."""
        return f"{self.alert.alert_id}:{self.alert.kind}:{self.alert.window_index}"


def classify(measurement: DriftMeasurement, policy: DriftPolicy) -> Verdict | None:
    """The window's severity, or ``None`` when it holds too few samples to judge either way."""
    features_judged = bool(measurement.features) and measurement.samples >= policy.min_samples
    classes = measurement.classes
    classes_judged = classes is not None and sum(classes.counts) >= policy.min_samples
    if not (features_judged or classes_judged):
        return None
    alpha = policy.alpha / 2 if features_judged and classes_judged else policy.alpha
    findings: list[tuple[Severity, str]] = []
    if features_judged:
        for f in measurement.features:
            if f.ks_pvalue_adjusted >= alpha:
                continue
            level = max(_level(f.psi, policy.psi_warning, policy.psi_critical),
                        _level(f.wasserstein_normalized, WASSERSTEIN_WARNING, WASSERSTEIN_CRITICAL),
                        key=lambda s: s.rank)
            if level is not Severity.NONE:
                findings.append((level, f"{f.name}: psi {f.psi:.3g}, "
                                        f"wasserstein/std {f.wasserstein_normalized:.3g}, "
                                        f"ks p_adj {f.ks_pvalue_adjusted:.2g}"))
    if classes is not None and classes_judged and classes.chi2_pvalue < alpha:
        level = _level(classes.js_distance, policy.js_warning, policy.js_critical)
        if level is not Severity.NONE:
            findings.append((level, f"predicted classes: js {classes.js_distance:.3g}, "
                                    f"chi2 p {classes.chi2_pvalue:.2g}"))
    findings.sort(key=lambda item: -item[0].rank)
    severity = findings[0][0] if findings else Severity.NONE
    return Verdict(severity=severity, reasons=tuple(reason for _, reason in findings[:MAX_REASONS]))


def step(state: AlertState, measurement: DriftMeasurement,
         policy: DriftPolicy) -> tuple[AlertState, list[AlertAction]]:
    """Advance the alert state by one window; a window already judged (redelivery) changes nothing."""
    index = measurement.window.index
    if state.last_window is not None and index <= state.last_window:
        return state, []
    verdict = classify(measurement, policy)
    if verdict is None:
        # Too few samples says nothing about drift: neither a drifting nor a clean window.
        return state.model_copy(update={"last_window": index}), []
    drifting = verdict.severity is not Severity.NONE
    counted = state.model_copy(update={
        "last_window": index,
        "warning_streak": state.warning_streak + 1 if drifting else 0,
        "critical_streak": state.critical_streak + 1 if verdict.severity is Severity.CRITICAL else 0,
        "clean_streak": 0 if drifting else state.clean_streak + 1,
    })
    return _decide(counted, verdict, index, policy)


def _decide(state: AlertState, verdict: Verdict, index: int,
            policy: DriftPolicy) -> tuple[AlertState, list[AlertAction]]:
    n = policy.consecutive_windows
    sustained = (Severity.CRITICAL if state.critical_streak >= n
                 else Severity.WARNING if state.warning_streak >= n else Severity.NONE)
    if state.severity is not Severity.NONE and state.clean_streak >= n:
        action = _action(state, AlertKind.RESOLVED, Severity.NONE, index, verdict, policy)
        return state.model_copy(update={"severity": Severity.NONE, "alert_id": None}), [action]
    if sustained.rank <= state.severity.rank:
        # Nothing new: an open alert is not fired again, and it is not lowered while drift persists.
        return state, []
    kind = AlertKind.FIRED if state.severity is Severity.NONE else AlertKind.ESCALATED
    alert_id = state.alert_id or f"{state.model}/{state.version}/drift/{index}"
    opened = state.model_copy(update={"severity": sustained, "alert_id": alert_id})
    return opened, [_action(opened, kind, sustained, index, verdict, policy, previous=state.severity)]


def _action(state: AlertState, kind: AlertKind, severity: Severity, index: int, verdict: Verdict,
            policy: DriftPolicy, *, previous: Severity | None = None) -> AlertAction:
    assert state.alert_id is not None
    return AlertAction(DriftAlertData(
        alert_id=state.alert_id, model=state.model, version=state.version, kind=kind, severity=severity,
        previous_severity=state.severity if previous is None else previous, window_index=index,
        reasons=list(verdict.reasons),
        rollback_requested=severity is Severity.CRITICAL and policy.rollback_on_critical,
    ))


def _level(value: float, warning: float, critical: float) -> Severity:
    if value >= critical:
        return Severity.CRITICAL
    if value >= warning:
        return Severity.WARNING
    return Severity.NONE
