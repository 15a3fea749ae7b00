"""KS p-values for alerting: a fast asymptotic value, and SciPy's exact one only where it could change a decision.

The exact two-sample KS p-value (SciPy's lattice-path recursion) costs milliseconds per feature at 1,000 x
5,000 rows; the asymptotic one costs microseconds for all features at once. Alerting only asks whether each
adjusted p-value is below a threshold, so the exact value is needed only where the asymptotic one, with its
error bound, leaves that answer open.

The bound (``test_asymptotic_error_bound`` checks it against SciPy's exact values over a grid of sample sizes
and every lattice statistic from p near 1 to p below 1e-15): for ``min(n1, n2) >= ASYMPTOTIC_MIN_N`` and
``max(n1, n2) <= KS_MAX_EXACT_N``, with ``q`` the asymptotic value below,

    exact <= RATIO_HI * max(q, P_FLOOR)    and, where q >= P_FLOOR,    exact >= RATIO_LO * q.

Measured worst cases on that grid are 0.89 and 1.10, so the constants leave about a factor of two of margin.
Every feature's true p-value lies in that envelope, adjusted p-values (Bonferroni and Benjamini-Hochberg) only
grow when any raw p-value grows, so a feature whose adjusted upper bound is below a threshold, or whose adjusted
lower bound is at or above it, has the same decision as with exact p-values. The remaining features get exact
values, the envelope narrows to a point there, and the check repeats; hence the decisions at every threshold
given are identical to all-exact ones (``test_decisions_equal_all_exact``). Reported p-values are exact where
computed and asymptotic elsewhere (within the envelope).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import special

from monitoring import detectors
from monitoring.features import FloatArray
from schemas.predictions import Correction

BoolArray = npt.NDArray[np.bool_]

# Below this many rows in the smaller sample the lattice is coarse and the approximation's error grows (at
# 50 x 50 exact/asymptotic reaches 0.74 near p = 1e-6); the exact recursion is cheap there anyway.
ASYMPTOTIC_MIN_N = 100
RATIO_LO = 0.8
RATIO_HI = 1.25
# Below this the relative error of the approximation grows in the far tail (the exact value is then smaller,
# so only the lower side of the envelope widens, to zero).
P_FLOOR = 1e-6


def asymptotic_pvalues(statistic: FloatArray, n1: int, n2: int) -> FloatArray:
    """Kolmogorov's limit with Stephens' small-sample factor, read half a lattice step below ``statistic``.

    Half a step is a continuity correction: the exact p-value is P(D >= d) on a lattice of ``1 / lcm``.
    """
    en = n1 * n2 / (n1 + n2)
    root = math.sqrt(en)
    lcm = (n1 // math.gcd(n1, n2)) * n2
    scaled = (root + 0.12 + 0.11 / root) * np.maximum(statistic - 0.5 / lcm, 0.0)
    p: FloatArray = np.clip(special.kolmogorov(scaled), 0.0, 1.0)
    return p


def envelope(q: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Lower and upper bounds of the exact p-value, given the asymptotic value ``q`` (see the module doc)."""
    lower: FloatArray = np.where(q >= P_FLOOR, RATIO_LO * q, 0.0)
    upper: FloatArray = np.minimum(RATIO_HI * np.maximum(q, P_FLOOR), 1.0)
    return lower, upper


def ks_pvalues_for_alerting(statistic: FloatArray, n1: int, n2: int, *, correction: Correction,
                            thresholds: Sequence[float]) -> tuple[FloatArray, FloatArray]:
    """``(statistic, p-value)`` per feature, with ``adjust_pvalues(p) < t`` decided as exact values would.

    Same statistic as ``detectors.ks_pvalues`` (snapped to the lattice); p-values exact where needed for the
    decisions at ``thresholds``, asymptotic elsewhere. Without thresholds, or outside the sizes the bound
    covers, every p-value is ``ks_2samp``'s.
    """
    if not thresholds or min(n1, n2) < ASYMPTOTIC_MIN_N or max(n1, n2) > detectors.KS_MAX_EXACT_N:
        return detectors.ks_pvalues(statistic, n1, n2)
    lcm = (n1 // math.gcd(n1, n2)) * n2
    d = np.round(np.asarray(statistic, dtype=np.float64) * lcm) / lcm
    p = asymptotic_pvalues(d, n1, n2)
    lower, upper = envelope(p)
    exact = np.zeros(d.shape, dtype=bool)
    while True:
        open_ = _undecided(lower, upper, correction, thresholds)
        todo = open_ & ~exact
        if not todo.any():
            if not open_.any():
                return d, p
            # Open only through other features' envelopes: make every feature that can matter exact (one
            # whose lower bound is at or above every threshold never counts, see _undecided).
            todo = ~exact & (lower < max(thresholds))
        _, p[todo] = detectors.ks_pvalues(d[todo], n1, n2)
        lower[todo] = upper[todo] = p[todo]
        exact |= todo


def _undecided(lower: FloatArray, upper: FloatArray, correction: Correction,
               thresholds: Sequence[float]) -> BoolArray:
    """Features whose decision ``adjusted < t`` differs between the two ends of the envelope, at some ``t``."""
    low = detectors.adjust_pvalues(lower, correction)
    high = detectors.adjust_pvalues(upper, correction)
    out: BoolArray = np.zeros(lower.shape, dtype=bool)
    for t in thresholds:
        out |= (low < t) & (high >= t)
    return out
