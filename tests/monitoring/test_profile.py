"""Reference profiles: bins, subsample, summaries, image features, and the JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitoring.features import IMAGE_FEATURES, InputKind, image_summary
from monitoring.profile import MAX_SAMPLE, build_profile, profile_from_dict
from schemas.errors import PermanentError


def test_tabular_profile_summaries():
    """Summary statistics, class counts and bin proportions come from the whole reference sample."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    labels = rng.integers(0, 4, size=2000)
    profile = build_profile(x, labels=labels, n_classes=5)
    np.testing.assert_array_equal(profile.mean, x.mean(axis=0))
    np.testing.assert_array_equal(profile.std, x.std(axis=0))
    np.testing.assert_allclose(profile.quantiles[:, 2], np.median(x, axis=0), rtol=1e-12)
    assert profile.class_counts.tolist() == [*np.bincount(labels, minlength=4).tolist(), 0]
    assert profile.edges.shape == (3, 9) and np.allclose(profile.proportions.sum(axis=1), 1.0)
    assert profile.feature_names == ("x0", "x1", "x2") and profile.kind is InputKind.TABULAR


def test_subsample_is_bounded_sorted_and_reproducible():
    """The two-sample reference keeps at most MAX_SAMPLE rows, each column sorted, same for same seed."""
    x = np.random.default_rng(1).normal(size=(MAX_SAMPLE + 3000, 2))
    a, b = build_profile(x), build_profile(x)
    assert a.sample.shape == (MAX_SAMPLE, 2) and a.n_reference == MAX_SAMPLE + 3000
    assert (np.diff(a.sample, axis=0) >= 0).all()
    np.testing.assert_array_equal(a.sample, b.sample)


def test_class_counts_from_probabilities():
    """Predicted-class counts are the argmax of the probabilities."""
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert build_profile(np.zeros((3, 1)), probabilities=probs).class_counts.tolist() == [1, 2]


@pytest.mark.parametrize("shape", [(20, 8, 8), (20, 3, 8, 8)])
def test_image_profile_uses_per_image_summaries(shape):
    """Images [n,H,W] and [n,C,H,W] are profiled on per-image mean, std, min, max and percentiles."""
    images = np.random.default_rng(2).uniform(0, 16, size=shape)
    profile = build_profile(images)
    assert profile.kind is InputKind.IMAGE and profile.feature_names == IMAGE_FEATURES
    flat = images.reshape(20, -1)
    summary = image_summary(images)
    np.testing.assert_allclose(summary[:, 0], flat.mean(axis=1))
    np.testing.assert_allclose(summary[:, 3], flat.max(axis=1))
    np.testing.assert_allclose(summary[:, 6], np.median(flat, axis=1))
    np.testing.assert_allclose(profile.features(flat), summary)


def test_embeddings_are_extra_numeric_features():
    """A supplied embedding is appended to the image summaries as features emb0.."""
    rng = np.random.default_rng(3)
    profile = build_profile(rng.uniform(size=(30, 8, 8)), embeddings=rng.normal(size=(30, 4)))
    assert profile.feature_names[-4:] == ("emb0", "emb1", "emb2", "emb3") and profile.n_features == 13


def test_round_trip_through_json_is_exact():
    """to_dict is strict JSON (no inf/NaN) and profile_from_dict restores every array exactly."""
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.normal(size=500), rng.integers(0, 3, size=500), np.ones(500)])
    profile = build_profile(x, labels=rng.integers(0, 3, size=500))
    restored = profile_from_dict(json.loads(json.dumps(profile.to_dict(), allow_nan=False)))
    for name in ("edges", "proportions", "sample", "mean", "std", "minimum", "maximum", "quantiles",
                 "class_counts"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(profile, name))
    assert (restored.kind, restored.feature_names, restored.n_reference) == (
        profile.kind, profile.feature_names, profile.n_reference)


def test_unknown_profile_version_is_permanent_error():
    """A stored profile of another format version is refused with a PermanentError."""
    data = build_profile(np.zeros((5, 1))).to_dict() | {"profile_version": 99}
    with pytest.raises(PermanentError):
        profile_from_dict(data)


def test_bad_reference_is_refused():
    """Non-finite reference values, 1-D inputs and mismatched labels are programmer errors."""
    with pytest.raises(ValueError, match="finite"):
        build_profile(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="dimensions"):
        build_profile(np.zeros(5))
    with pytest.raises(ValueError, match="one row per"):
        build_profile(np.zeros((5, 1)), labels=[0, 1])
