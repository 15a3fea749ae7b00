"""Evaluate one closed window against a reference profile: every detector, one pass over the window.

This is the only place that knows which statistic goes into which field of ``DriftMeasurement``; deciding
whether the numbers are alarming is ``monitoring.alerts``' job.
"""

from __future__ import annotations

import numpy as np

from monitoring import detectors, ks_alerting
from monitoring.features import FloatArray, IntArray
from monitoring.profile import ReferenceProfile, bin_proportions
from monitoring.windows import WindowData
from schemas.errors import PermanentError, Reason
from schemas.predictions import ClassDrift, Correction, DriftMeasurement, FeatureDrift

# Wasserstein distance is reported in units of the reference standard deviation. A constant reference
# feature has no spread, so the unit is floored here (Evidently uses the same floor, which keeps the
# normalised numbers comparable between the two tools).
MIN_NORMALIZING_STD = 1e-3


def measure(profile: ReferenceProfile, window: WindowData, *,
            correction: Correction = Correction.BENJAMINI_HOCHBERG, alpha: float | None = None) -> DriftMeasurement:
    """All drift statistics of ``window``; features and classes are each skipped when the window has none.

    Predicted classes outside the profile's classes are ignored: the reference says nothing about them. With
    the policy's ``alpha``, KS p-values are exact only where they could change a decision at ``alpha`` or
    ``alpha / 2`` (the two levels ``monitoring.alerts`` tests at) and asymptotic elsewhere, within the bound
    stated in ``monitoring.ks_alerting``; without it every KS p-value is exact.
    """
    x = _window_features(profile, window)
    thresholds = () if alpha is None else (alpha, alpha / 2)
    return DriftMeasurement(window=window.meta, samples=x.shape[0], correction=correction,
                            features=_feature_drift(profile, x, correction, thresholds) if x.shape[0] else [],
                            classes=_class_drift(profile, window.predicted))


def _window_features(profile: ReferenceProfile, window: WindowData) -> FloatArray:
    parts = [profile.features(window.inputs)] if window.inputs.shape[0] else []
    if window.input_features.shape[0]:
        parts.append(window.input_features)
    x = np.vstack(parts) if parts else np.empty((0, profile.n_features))
    if x.shape[1] != profile.n_features:
        raise PermanentError(f"window rows have {x.shape[1]} features, the profile has {profile.n_features}",
                             reason=Reason.EVENT_INVALID,
                             hint="input_features must follow the profile's feature_names, in order.")
    return x


def _feature_drift(profile: ReferenceProfile, x: FloatArray, correction: Correction,
                   thresholds: tuple[float, ...]) -> list[FeatureDrift]:
    live = bin_proportions(x, profile.edges, profile.epsilon)
    psi = detectors.psi(live, profile.proportions)
    widths = np.isfinite(profile.edges).sum(axis=1)  # padded bins are empty on both sides: left out
    raw_ks, wasserstein = detectors.ks_and_wasserstein(profile.sample, x)
    ks, pvalues = ks_alerting.ks_pvalues_for_alerting(raw_ks, x.shape[0], profile.sample.shape[0],
                                                      correction=correction, thresholds=thresholds)
    adjusted = detectors.adjust_pvalues(pvalues, correction)
    normalized = wasserstein / np.maximum(profile.std, MIN_NORMALIZING_STD)
    return [
        FeatureDrift(name=name, psi=float(psi[j]), ks_statistic=float(ks[j]), ks_pvalue=float(pvalues[j]),
                     ks_pvalue_adjusted=float(adjusted[j]), wasserstein=float(wasserstein[j]),
                     wasserstein_normalized=float(normalized[j]),
                     proportions=[round(float(p), 6) for p in live[j, : widths[j] + 1]])
        for j, name in enumerate(profile.feature_names)
    ]


def _class_drift(profile: ReferenceProfile, predicted: IntArray) -> ClassDrift | None:
    if profile.class_counts is None:
        return None
    k = profile.class_counts.size
    known = predicted[predicted < k]
    if known.size == 0:
        return None
    counts = np.bincount(known, minlength=k)
    chi2, pvalue, dof = detectors.chi2_homogeneity(profile.class_counts.astype(np.float64),
                                                   counts.astype(np.float64))
    js = detectors.js_distance(profile.class_counts.astype(np.float64), counts.astype(np.float64))
    return ClassDrift(chi2=chi2, chi2_pvalue=pvalue, dof=dof, js_distance=js, counts=counts.tolist())
