"""Calibration: no false alarms beyond the nominal rate on drift-free data; real shifts alert in time.

Nominal rate (see monitoring.alerts): a drift-free window is marked drifting with probability at most
``policy.alpha``; over 1,000 windows that is at most ``alpha * 1000`` drifting windows.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from monitoring.alerts import AlertState, classify, step
from monitoring.measure import measure
from monitoring.profile import build_profile
from monitoring.windows import WindowAccumulator
from schemas.policy import DriftPolicy
from schemas.predictions import AlertKind, Severity
from tests.monitoring.factories import record, window_data

N_WINDOWS = 1000


def test_false_alarm_rate_at_most_alpha_on_reference_data():
    """1,000 default-size windows from the reference distribution: drifting windows and alerts <= alpha."""
    rng = np.random.default_rng(2026)
    class_p = np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum()
    profile = build_profile(rng.normal(size=(2000, 10)), labels=rng.choice(10, size=2000, p=class_p))
    policy = DriftPolicy()
    # The strictest variant, where a single drifting window fires, runs beside the default policy.
    eager = policy.model_copy(update={"consecutive_windows": 1})
    states = {policy: AlertState(model="m", version="1"), eager: AlertState(model="m", version="1")}
    fired = dict.fromkeys(states, 0)
    drifting = 0
    for i in range(N_WINDOWS):
        x = rng.normal(size=(policy.window_size, 10))
        m = measure(profile, window_data(i, x, rng.choice(10, size=policy.window_size, p=class_p)))
        verdict = classify(m, policy)
        assert verdict is not None
        drifting += verdict.severity is not Severity.NONE
        for p in states:
            states[p], actions = step(states[p], m, p)
            fired[p] += sum(a.alert.kind is AlertKind.FIRED for a in actions)
    nominal = policy.alpha * N_WINDOWS
    assert drifting <= nominal and fired[eager] <= nominal
    # Two drifting windows in a row under no drift: about alpha squared per window.
    assert fired[policy] <= 1


def _digits():
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.images))
    return digits.images[order], digits.target[order]


def _alerts_for(images: np.ndarray, labels: np.ndarray, profile, policy, windows: int) -> list:
    acc = WindowAccumulator(policy)
    state = AlertState(model="digits", version="1")
    history = []
    size = policy.window_size
    recs = (record(i, inputs=images[i].ravel().tolist(), predicted=int(labels[i]))
            for i in range(windows * size))
    for window in acc.add(recs):
        state, actions = step(state, measure(profile, window), policy)
        history.append(actions)
    assert len(history) == windows
    return history


@pytest.mark.parametrize("shift", ["brightness", "noise"])
def test_digits_shift_alerts_within_consecutive_windows(shift):
    """Brightened or noisy digit images fire a drift alert exactly at the configured window count."""
    images, labels = _digits()
    profile = build_profile(images[:1000], labels=labels[:1000])
    policy = DriftPolicy(window_size=200, window_seconds=3600, consecutive_windows=2)
    rng = np.random.default_rng(1)
    live = images[1000:1400]
    if shift == "brightness":
        live = np.clip(live + 3.0, 0, 16)
    else:
        live = np.clip(live + rng.normal(0, 3.0, size=live.shape), 0, 16)
    history = _alerts_for(live, labels[1000:1400], profile, policy, windows=2)
    assert history[0] == []
    (fired,) = history[1]
    assert fired.alert.kind is AlertKind.FIRED and fired.alert.severity is Severity.CRITICAL


def test_digits_without_shift_stay_quiet():
    """Held-out digit images from the same source raise no alert."""
    images, labels = _digits()
    profile = build_profile(images[:1000], labels=labels[:1000])
    policy = DriftPolicy(window_size=200, window_seconds=3600, consecutive_windows=1)
    history = _alerts_for(images[1000:1600], labels[1000:1600], profile, policy, windows=3)
    assert history == [[], [], []]
