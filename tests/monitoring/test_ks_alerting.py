"""Asymptotic KS p-values for alerting: the stated error bound, and decisions identical to exact p-values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitoring import detectors, ks_alerting
from monitoring.alerts import classify
from monitoring.measure import measure
from monitoring.profile import build_profile
from schemas.policy import DriftPolicy
from schemas.predictions import Correction
from tests.monitoring.factories import window_data

# Equal, unequal, coprime and highly divisible sizes from the smallest the bound covers to the largest exact one.
BOUND_SIZES = [(100, 100), (100, 5000), (101, 5000), (150, 1000), (333, 1000), (500, 500), (500, 2000),
               (700, 2100), (1000, 1000), (999, 5000), (1000, 5000), (2000, 5000), (5000, 5000)]


def _lattice(n1: int, n2: int, points: int) -> np.ndarray:
    """Lattice statistics from p near 1 down past p = 1e-15, ``points`` of them evenly spread."""
    lcm = (n1 // math.gcd(n1, n2)) * n2
    root = math.sqrt(n1 * n2 / (n1 + n2))
    hs = np.unique(np.round(np.linspace(0.3 / root, 5.5 / root, points) * lcm))
    return hs[hs <= lcm] / lcm


@pytest.mark.parametrize(("n1", "n2"), BOUND_SIZES)
def test_asymptotic_error_bound(n1, n2):
    """Over lattice statistics, exact p <= HI * max(q, floor), and exact p >= LO * q wherever q >= floor."""
    d = _lattice(n1, n2, 40)
    _, exact = detectors.ks_pvalues(d, n1, n2)
    q = ks_alerting.asymptotic_pvalues(d, n1, n2)
    lower, upper = ks_alerting.envelope(q)
    assert np.all(exact <= upper) and np.all(exact >= lower)
    assert np.all(exact[q >= ks_alerting.P_FLOOR] >= ks_alerting.RATIO_LO * q[q >= ks_alerting.P_FLOOR])


def _decisions(p: np.ndarray, correction: Correction, thresholds: tuple[float, ...]) -> list[np.ndarray]:
    adjusted = detectors.adjust_pvalues(p, correction)
    return [adjusted < t for t in thresholds]


@pytest.mark.parametrize("correction", [Correction.BENJAMINI_HOCHBERG, Correction.BONFERRONI])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.2])
@pytest.mark.parametrize(("n1", "n2"), [(1000, 5000), (500, 500), (120, 2000)])
def test_decisions_equal_all_exact(correction, alpha, n1, n2):
    """Statistics packed around every BH/Bonferroni cut-off at alpha and alpha/2 decide as exact p-values do."""
    thresholds = (alpha, alpha / 2)
    lcm = (n1 // math.gcd(n1, n2)) * n2
    all_d = _lattice(n1, n2, 120)
    _, all_p = detectors.ks_pvalues(all_d, n1, n2)
    rng = np.random.default_rng(int(alpha * 1000) + n1)
    m = 20
    for _ in range(15):
        # Each feature lands on the lattice point whose exact p is nearest a random cut-off t * k / m (or,
        # for Bonferroni, t / m), nudged by up to two lattice steps: the hardest cases for the envelope.
        k = rng.integers(1, m + 1, size=m) if correction is Correction.BENJAMINI_HOCHBERG else np.ones(m)
        targets = rng.choice(thresholds, size=m) * k / m
        nearest = np.abs(np.log(all_p[:, None]) - np.log(targets[None, :])).argmin(axis=0)
        d = all_d[nearest] + rng.integers(-2, 3, size=m) / lcm
        d_fast, fast = ks_alerting.ks_pvalues_for_alerting(d, n1, n2, correction=correction,
                                                           thresholds=thresholds)
        d_exact, exact = detectors.ks_pvalues(d, n1, n2)
        np.testing.assert_array_equal(d_fast, d_exact)
        for got, want in zip(_decisions(fast, correction, thresholds), _decisions(exact, correction, thresholds),
                             strict=True):
            np.testing.assert_array_equal(got, want)


def test_without_thresholds_or_small_samples_all_exact():
    """No thresholds, a sample under ASYMPTOTIC_MIN_N, or one over KS_MAX_EXACT_N: ks_2samp's values exactly."""
    for n1, n2, thresholds in [(1000, 5000, ()), (99, 5000, (0.05,)), (50, 12_000, (0.05,))]:
        d = _lattice(n1, n2, 30)
        got = ks_alerting.ks_pvalues_for_alerting(d, n1, n2, correction=Correction.BENJAMINI_HOCHBERG,
                                                  thresholds=thresholds)
        want = detectors.ks_pvalues(d, n1, n2)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_measure_with_alpha_classifies_as_exact():
    """Windows measured with the policy's alpha get the same verdict as with every KS p-value exact."""
    rng = np.random.default_rng(7)
    profile = build_profile(rng.normal(size=(3000, 12)), labels=rng.integers(0, 5, size=3000))
    policy = DriftPolicy(window_size=400)
    for i, shift in enumerate(np.linspace(0.0, 0.25, 30)):
        x = rng.normal(size=(400, 12))
        x[:, :4] += shift
        window = window_data(i, x, rng.integers(0, 5, size=400))
        fast = measure(profile, window, alpha=policy.alpha)
        exact = measure(profile, window)
        got, want = classify(fast, policy), classify(exact, policy)
        # Reasons quote the p-value to two digits, which may differ; what alerted and how badly may not.
        assert got is not None and want is not None and got.severity is want.severity
        assert [r.split(":")[0] for r in got.reasons] == [r.split(":")[0] for r in want.reasons]
        assert [f.ks_statistic for f in fast.features] == [f.ks_statistic for f in exact.features]
        for f, e in zip(fast.features, exact.features, strict=True):
            assert ks_alerting.RATIO_LO * f.ks_pvalue <= e.ks_pvalue + 1e-300
            assert e.ks_pvalue <= ks_alerting.RATIO_HI * max(f.ks_pvalue, ks_alerting.P_FLOOR)


def test_far_from_alpha_no_exact_recursion_runs():
    """Statistics whose p-values are far from every cut-off are answered without SciPy's exact recursion."""
    n1, n2 = 1000, 5000
    d = np.array([0.01, 0.02, 0.03, 0.2, 0.25])  # p from near 1 down to far below 1e-12
    detectors._exact_two_sided.cache_clear()
    _, p = ks_alerting.ks_pvalues_for_alerting(d, n1, n2, correction=Correction.BENJAMINI_HOCHBERG,
                                               thresholds=(0.01, 0.005))
    assert detectors._exact_two_sided.cache_info().misses == 0
    assert p[0] > 0.5 and p[-1] < 1e-12
