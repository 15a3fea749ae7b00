"""Alert rules: effect and significance, min samples, consecutive windows, de-dup, escalation, resolve."""

from __future__ import annotations

from monitoring.alerts import AlertAction, AlertState, classify, step
from schemas.events import EventType
from schemas.policy import DriftPolicy
from schemas.predictions import AlertKind, DriftMeasurement, Severity
from tests.monitoring.factories import measurement

POLICY = DriftPolicy(consecutive_windows=2, min_samples=100)
WARN = {"psi": 0.15, "p_adj": 1e-6}
CRIT = {"psi": 0.5, "p_adj": 1e-9}


def _run(windows: list[DriftMeasurement], policy: DriftPolicy = POLICY,
         state: AlertState | None = None) -> tuple[AlertState, list[list[AlertAction]]]:
    state = state or AlertState(model="digits", version="1")
    history = []
    for m in windows:
        state, actions = step(state, m, policy)
        history.append(actions)
    return state, history


def test_significance_without_effect_is_not_drift():
    """A tiny p-value with a negligible PSI (a large, healthy window) is not drift."""
    verdict = classify(measurement(0, psi=0.01, p_adj=1e-30, samples=100_000), POLICY)
    assert verdict is not None and verdict.severity is Severity.NONE


def test_effect_without_significance_is_not_drift():
    """A large PSI that is not significant (noise in a small window) is not drift."""
    verdict = classify(measurement(0, psi=0.9, p_adj=0.2), POLICY)
    assert verdict is not None and verdict.severity is Severity.NONE


def test_effect_levels_map_to_severity():
    """PSI over the warning / critical thresholds gives warning / critical, with a readable reason."""
    assert classify(measurement(0, **WARN), POLICY).severity is Severity.WARNING
    verdict = classify(measurement(0, **CRIT), POLICY)
    assert verdict.severity is Severity.CRITICAL and "x0: psi 0.5" in verdict.reasons[0]


def test_normalised_wasserstein_is_an_effect_size():
    """A significant shift with a large Wasserstein/std but small PSI still counts as drift."""
    verdict = classify(measurement(0, psi=0.01, wasserstein=0.3, p_adj=1e-8), POLICY)
    assert verdict.severity is Severity.CRITICAL


def test_class_drift_uses_js_and_chi2():
    """Predicted classes drift when JS distance is large and the chi-square test is significant."""
    assert classify(measurement(0, js=0.25, chi2_p=1e-12), POLICY).severity is Severity.CRITICAL
    assert classify(measurement(0, js=0.25, chi2_p=0.3), POLICY).severity is Severity.NONE
    assert classify(measurement(0, js=0.02, chi2_p=1e-12), POLICY).severity is Severity.NONE


def test_alpha_is_split_between_features_and_classes():
    """With both families present each is tested at alpha/2, so a p-value just under alpha is not enough."""
    p = POLICY.alpha * 0.75
    assert classify(measurement(0, psi=0.5, p_adj=p), POLICY).severity is Severity.CRITICAL
    assert classify(measurement(0, psi=0.5, p_adj=p, js=0.0, chi2_p=0.9), POLICY).severity is Severity.NONE


def test_too_few_samples_is_not_judged():
    """A window under min_samples gives no verdict and neither advances nor breaks a streak."""
    assert classify(measurement(0, samples=99, **CRIT), POLICY) is None
    state, history = _run([measurement(0, **WARN), measurement(1, samples=10), measurement(2, **WARN)])
    assert history[1] == []
    assert [a.alert.kind for a in history[2]] == [AlertKind.FIRED]
    assert state.last_window == 2


def test_fires_only_after_consecutive_windows():
    """One drifting window does not fire; the configured number in a row does, as a warning."""
    state, history = _run([measurement(0, **WARN), measurement(1), measurement(2, **WARN),
                           measurement(3, **WARN)])
    assert history[:3] == [[], [], []]
    (fired,) = history[3]
    assert fired.alert.kind is AlertKind.FIRED and fired.alert.severity is Severity.WARNING
    assert fired.event_type is EventType.DRIFT_ALERT and fired.alert.window_index == 3
    assert state.severity is Severity.WARNING and state.alert_id == "digits/1/drift/3"


def test_single_window_policy_fires_at_once():
    """With consecutive_windows=1 the first drifting window fires."""
    _, history = _run([measurement(0, **CRIT)], DriftPolicy(consecutive_windows=1))
    assert history[0][0].alert.severity is Severity.CRITICAL


def test_open_alert_is_not_refired():
    """While drift persists at the same severity an open alert produces no further actions."""
    _, history = _run([measurement(i, **WARN) for i in range(6)])
    assert [len(h) for h in history] == [0, 1, 0, 0, 0, 0]


def test_escalation_fires_again_with_same_alert_id():
    """Sustained critical drift on an open warning escalates it (same id) and asks for rollback if set."""
    policy = DriftPolicy(consecutive_windows=2, rollback_on_critical=True)
    _, history = _run([measurement(0, **WARN), measurement(1, **WARN), measurement(2, **CRIT),
                       measurement(3, **CRIT), measurement(4, **CRIT)], policy)
    (fired,), (escalated,) = history[1], history[3]
    assert fired.alert.rollback_requested is False
    assert escalated.alert.kind is AlertKind.ESCALATED
    assert escalated.alert.previous_severity is Severity.WARNING
    assert escalated.alert.severity is Severity.CRITICAL
    assert escalated.alert.alert_id == fired.alert.alert_id and escalated.alert.rollback_requested
    assert history[4] == []


def test_rollback_needs_policy_flag():
    """A critical alert requests rollback only when the policy says so."""
    _, history = _run([measurement(0, **CRIT), measurement(1, **CRIT)])
    assert history[1][0].alert.severity is Severity.CRITICAL and not history[1][0].alert.rollback_requested


def test_resolves_after_consecutive_clean_windows():
    """An open alert resolves only after the configured number of clean windows in a row."""
    state, history = _run([measurement(0, **CRIT), measurement(1, **CRIT), measurement(2),
                           measurement(3, **WARN), measurement(4), measurement(5)])
    assert history[2:5] == [[], [], []]
    (resolved,) = history[5]
    assert resolved.alert.kind is AlertKind.RESOLVED and resolved.event_type is EventType.DRIFT_RESOLVED
    assert (resolved.alert.previous_severity, resolved.alert.severity) == (Severity.CRITICAL, Severity.NONE)
    assert resolved.alert.alert_id == "digits/1/drift/1"
    assert state.severity is Severity.NONE and state.alert_id is None


def test_new_alert_after_resolve_gets_new_id():
    """Drift returning after a resolve opens a fresh alert with its own id."""
    windows = [measurement(0, **WARN), measurement(1, **WARN), measurement(2), measurement(3),
               measurement(4, **WARN), measurement(5, **WARN)]
    _, history = _run(windows)
    assert history[5][0].alert.kind is AlertKind.FIRED and history[5][0].alert.alert_id == "digits/1/drift/5"


def test_redelivered_window_changes_nothing():
    """A window index at or below the last judged one (redelivery, replay) is ignored."""
    state, _ = _run([measurement(0, **WARN), measurement(1, **WARN)])
    again, actions = step(state, measurement(1, **CRIT), POLICY)
    assert again == state and actions == []


def test_state_round_trips_through_json():
    """The alert state survives model_dump(mode='json') and model_validate unchanged."""
    state, _ = _run([measurement(0, **WARN), measurement(1, **WARN), measurement(2)])
    assert AlertState.model_validate_json(state.model_dump_json()) == state


def test_event_ids_are_deterministic():
    """Replaying the same windows from the same state yields the same event ids."""
    windows = [measurement(0, **WARN), measurement(1, **WARN)]
    first = _run(windows)[1][1][0]
    second = _run(windows)[1][1][0]
    assert first.event_id == second.event_id == "digits/1/drift/1:fired:1"
