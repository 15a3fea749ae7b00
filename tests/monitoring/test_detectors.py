"""Every drift statistic against its reference implementation (SciPy, or PSI written out by hand)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from monitoring import detectors
from monitoring.profile import EPSILON, bin_proportions, build_profile
from schemas.predictions import Correction

TOL = 1e-9

# (window rows, reference rows, rounding decimals or None): unequal, equal, tiny, asymptotic (>10,000) and
# heavily tied samples, so exact, square and asymptotic KS branches and tie handling are all exercised.
SHAPES = [(1000, 5000, None), (300, 300, None), (3, 5, None), (1, 2, None), (40, 12_000, None),
          (500, 2000, 1), (50, 70, 0), (8, 8, 0)]


def _samples(seed: int, n: int, n_ref: int, decimals: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_ref, 4)) * [1, 2, 0.5, 3]
    x = rng.normal(loc=[0, 0.3, -0.1, 1], size=(n, 4)) * [1, 2, 0.6, 3]
    if decimals is not None:
        ref, x = np.round(ref, decimals), np.round(x, decimals)
    return np.sort(ref, axis=0), x


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "n_ref", "decimals"), SHAPES)
def test_ks_matches_scipy(seed, n, n_ref, decimals):
    """KS statistic and p-value equal ks_2samp(method='auto') for every feature, sizes and ties."""
    ref, x = _samples(seed, n, n_ref, decimals)
    raw, _ = detectors.ks_and_wasserstein(ref, x)
    d, p = detectors.ks_pvalues(raw, n, n_ref)
    for j in range(x.shape[1]):
        expected = stats.ks_2samp(x[:, j], ref[:, j])
        assert abs(d[j] - expected.statistic) <= TOL
        assert abs(p[j] - expected.pvalue) <= TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "n_ref", "decimals"), SHAPES)
def test_wasserstein_matches_scipy(seed, n, n_ref, decimals):
    """Wasserstein-1 per feature equals scipy.stats.wasserstein_distance."""
    ref, x = _samples(seed, n, n_ref, decimals)
    _, w = detectors.ks_and_wasserstein(ref, x)
    for j in range(x.shape[1]):
        assert abs(w[j] - stats.wasserstein_distance(x[:, j], ref[:, j])) <= TOL


def test_ks_feature_blocks_agree_with_one_block():
    """Features are processed in blocks; results do not depend on where the blocks split."""
    rng = np.random.default_rng(5)
    ref = np.sort(rng.normal(size=(200, 300)), axis=0)
    x = rng.normal(size=(50, 300))
    d, w = detectors.ks_and_wasserstein(ref, x)
    for j in (0, 127, 128, 299):
        assert abs(d[j] - stats.ks_2samp(x[:, j], ref[:, j]).statistic) <= TOL
        assert abs(w[j] - stats.wasserstein_distance(x[:, j], ref[:, j])) <= TOL


def _plain_psi(ref_col, cur_col, bins=10, eps=EPSILON):
    # Written out the long way on purpose: quantile edges, dedup, count per bin, floor, sum.
    inner = []
    for q in np.quantile(ref_col, [i / bins for i in range(1, bins)]):
        if not inner or q != inner[-1]:
            inner.append(q)
    edges = [-math.inf, *inner, math.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        r = sum(1 for v in ref_col if lo <= v < hi) / len(ref_col)
        c = sum(1 for v in cur_col if lo <= v < hi) / len(cur_col)
        r, c = max(r, eps), max(c, eps)
        total += (c - r) * math.log(c / r)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "n_ref", "decimals"), [(400, 1000, None), (30, 200, 0), (5, 50, None)])
def test_psi_matches_hand_computation(seed, n, n_ref, decimals):
    """PSI against reference quantile bins equals a plain loop over bins, incl. discrete features."""
    ref, x = _samples(seed, n, n_ref, decimals)
    profile = build_profile(ref)
    got = detectors.psi(bin_proportions(x, profile.edges, EPSILON), profile.proportions)
    for j in range(x.shape[1]):
        assert abs(got[j] - _plain_psi(ref[:, j], x[:, j])) <= TOL


def test_psi_constant_feature_has_two_bins():
    """A constant reference feature keeps one edge (two bins), and a shift off the constant shows up."""
    ref = np.column_stack([np.full(100, 3.0), np.arange(100.0)])
    profile = build_profile(ref)
    assert np.isfinite(profile.edges[0]).sum() == 1
    x = np.column_stack([np.full(50, 2.0), np.arange(50.0)])
    got = detectors.psi(bin_proportions(x, profile.edges, EPSILON), profile.proportions)
    assert abs(got[0] - _plain_psi(ref[:, 0], x[:, 0])) <= TOL
    assert got[0] > 1.0


TABLES = [
    ([30, 50, 20], [25, 60, 15]),
    ([5, 9], [12, 3]),            # 2x2: Yates correction applies
    ([100, 1], [99, 2]),          # 2x2 with a small cell
    ([400, 0, 300, 10], [30, 5, 20, 0]),
    ([3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [12, 11, 10, 9, 8, 7, 6, 5, 4, 3]),
]


@pytest.mark.parametrize(("ref", "cur"), TABLES)
def test_chi2_matches_scipy_contingency(ref, cur):
    """Chi-square statistic, p-value and dof equal chi2_contingency on the 2xK table (Yates on 2x2)."""
    chi2, p, dof = detectors.chi2_homogeneity(np.array(ref, float), np.array(cur, float))
    expected = stats.chi2_contingency(np.array([ref, cur]))
    assert abs(chi2 - expected.statistic) <= TOL
    assert abs(p - expected.pvalue) <= TOL
    assert dof == expected.dof


def test_chi2_drops_classes_absent_from_both():
    """Classes unseen in both rows are dropped (SciPy rejects them); the rest equals chi2_contingency."""
    chi2, p, dof = detectors.chi2_homogeneity(np.array([10.0, 0, 20, 0]), np.array([5.0, 0, 30, 0]))
    expected = stats.chi2_contingency(np.array([[10, 20], [5, 30]]))
    assert (abs(chi2 - expected.statistic), abs(p - expected.pvalue), dof) <= (TOL, TOL, 1)
    assert detectors.chi2_homogeneity(np.array([4.0, 0]), np.array([9.0, 0])) == (0.0, 1.0, 0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_js_distance_matches_scipy(seed):
    """JS distance equals scipy's jensenshannon with base 2, including empty classes."""
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 50, size=10).astype(float)
    q = rng.integers(0, 50, size=10).astype(float)
    p[seed] = 0.0
    assert abs(detectors.js_distance(p, q) - distance.jensenshannon(p, q, base=2)) <= TOL


def test_benjamini_hochberg_hand_computed():
    """BH step-up adjusted p-values equal values computed by hand (and SciPy's false_discovery_control)."""
    p = np.array([0.01, 0.04, 0.03, 0.20, 0.001])
    # Sorted: 0.001, 0.01, 0.03, 0.04, 0.20 -> x5/rank: 0.005, 0.025, 0.05, 0.05, 0.20; then running min
    # from the top keeps them; back in the input order:
    expected = np.array([0.025, 0.05, 0.05, 0.20, 0.005])
    got = detectors.adjust_pvalues(p, Correction.BENJAMINI_HOCHBERG)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(got, stats.false_discovery_control(p, method="bh"), rtol=0, atol=TOL)


def test_benjamini_hochberg_step_up_and_cap():
    """A larger p-value can lower earlier adjusted values (step-up), and nothing exceeds 1."""
    p = np.array([0.04, 0.045, 0.9])
    # 0.04*3/1=0.12, 0.045*3/2=0.0675, 0.9*3/3=0.9 -> running min from the top: 0.0675, 0.0675, 0.9
    got = detectors.adjust_pvalues(p, Correction.BENJAMINI_HOCHBERG)
    np.testing.assert_allclose(got, [0.0675, 0.0675, 0.9], rtol=0, atol=TOL)
    assert detectors.adjust_pvalues(np.array([0.6, 0.7]), Correction.BENJAMINI_HOCHBERG).max() <= 1.0


def test_bonferroni_hand_computed():
    """Bonferroni multiplies by the number of tests and caps at 1."""
    got = detectors.adjust_pvalues(np.array([0.001, 0.02, 0.5]), Correction.BONFERRONI)
    np.testing.assert_allclose(got, [0.003, 0.06, 1.0], rtol=0, atol=TOL)
    assert detectors.adjust_pvalues(np.array([]), Correction.BONFERRONI).size == 0
