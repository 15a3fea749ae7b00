"""The reference profile: everything about the training-time sample that drift detection compares against.

Built once per model version from the manifest's reference sample and stored in the registry as a JSON-able
dict, so that evaluating a live window never touches the reference data again: PSI bins and proportions are
precomputed, and the two-sample tests use a bounded, per-feature sorted subsample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from monitoring.features import IMAGE_FEATURES, FloatArray, InputKind, IntArray, featurize, input_kind_of
from schemas.errors import PermanentError, Reason

PROFILE_VERSION = 1
DEFAULT_BINS = 10
MAX_SAMPLE = 5_000
SUMMARY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# A bin that is empty on one side would make PSI infinite. Proportions are floored at EPSILON (the same
# convention as Evidently's 0.0001), which caps such a bin's contribution at about p * ln(p / 1e-4) while
# leaving any bin with at least one record in 10,000 untouched.
EPSILON = 1e-4


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Reference statistics of one model version; see ``build_profile``.

    ``edges`` holds each feature's interior PSI bin edges, ``[F, bins - 1]``, deduplicated and padded with
    ``+inf`` (a padded bin is empty on both sides and contributes nothing to PSI); the outer edges are
    ``-inf``/``+inf`` implicitly. ``proportions`` is ``[F, bins]``, floored at ``epsilon``. ``sample`` is
    ``[S, F]``, each column sorted ascending.
    """

    kind: InputKind
    feature_names: tuple[str, ...]
    n_reference: int
    edges: FloatArray
    proportions: FloatArray
    sample: FloatArray
    mean: FloatArray
    std: FloatArray
    minimum: FloatArray
    maximum: FloatArray
    quantiles: FloatArray
    class_counts: IntArray | None
    epsilon: float = EPSILON

    @property
    def n_features(self) -> int:
        """How many numeric features each record is compared on."""
        return len(self.feature_names)

    def features(self, inputs: npt.ArrayLike) -> FloatArray:
        """The feature matrix of raw live inputs, computed exactly as for the reference sample."""
        x = featurize(inputs, self.kind)
        if x.shape[1] != self.n_features:
            raise PermanentError(f"inputs give {x.shape[1]} features, the profile has {self.n_features}",
                                 reason=Reason.EVENT_INVALID,
                                 hint="Records must carry the inputs the reference was built from.")
        return x

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (no NaN or infinity) that ``profile_from_dict`` reads back exactly."""
        widths = np.isfinite(self.edges).sum(axis=1)
        return {
            "profile_version": PROFILE_VERSION,
            "kind": str(self.kind),
            "feature_names": list(self.feature_names),
            "n_reference": self.n_reference,
            "epsilon": self.epsilon,
            "edges": [row[:w].tolist() for row, w in zip(self.edges, widths, strict=True)],
            "proportions": [row[: w + 1].tolist() for row, w in zip(self.proportions, widths, strict=True)],
            "sample": self.sample.T.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "min": self.minimum.tolist(),
            "max": self.maximum.tolist(),
            "quantile_levels": list(SUMMARY_QUANTILES),
            "quantiles": self.quantiles.tolist(),
            "class_counts": None if self.class_counts is None else self.class_counts.tolist(),
        }


def build_profile(x: npt.ArrayLike, *, probabilities: npt.ArrayLike | None = None,
                  labels: npt.ArrayLike | None = None, n_classes: int | None = None,
                  embeddings: npt.ArrayLike | None = None, feature_names: list[str] | None = None,
                  bins: int = DEFAULT_BINS, max_sample: int = MAX_SAMPLE, seed: int = 0) -> ReferenceProfile:
    """Profile the reference sample ``x`` (``[n, F]`` tabular, ``[n, H, W]`` or ``[n, C, H, W]`` images).

    The class distribution comes from ``probabilities`` ``[n, K]`` (argmax) or from predicted ``labels``
    ``[n]``. ``embeddings`` ``[n, E]``, when given, are appended as extra numeric features; live records
    must then carry ``input_features``. The subsample for the two-sample tests is drawn with ``seed``, so a
    profile is reproducible.
    """
    if bins < 2:
        raise ValueError("bins must be at least 2")
    kind = input_kind_of(x)
    feats = featurize(x, kind)
    names = _feature_names(kind, feats.shape[1], feature_names)
    if embeddings is not None:
        emb = np.asarray(embeddings, dtype=np.float64).reshape(feats.shape[0], -1)
        feats = np.hstack([feats, emb])
        names = (*names, *(f"emb{i}" for i in range(emb.shape[1])))
    n = feats.shape[0]
    if n == 0 or not np.isfinite(feats).all():
        raise ValueError("the reference sample must be non-empty and finite")
    edges = _quantile_edges(feats, bins)
    rows = np.random.default_rng(seed).choice(n, max_sample, replace=False) if n > max_sample else slice(None)
    return ReferenceProfile(
        kind=kind, feature_names=names, n_reference=n, edges=edges,
        proportions=bin_proportions(feats, edges, EPSILON),
        sample=np.sort(feats[rows], axis=0),
        mean=feats.mean(axis=0), std=feats.std(axis=0), minimum=feats.min(axis=0), maximum=feats.max(axis=0),
        quantiles=np.quantile(feats, SUMMARY_QUANTILES, axis=0).T,
        class_counts=_class_counts(probabilities, labels, n_classes, n),
    )


def profile_from_dict(data: dict[str, Any]) -> ReferenceProfile:
    """Read a profile stored by ``ReferenceProfile.to_dict``."""
    if data.get("profile_version") != PROFILE_VERSION:
        raise PermanentError(f"unsupported reference profile version {data.get('profile_version')!r}",
                             reason=Reason.MANIFEST_INVALID,
                             hint="Rebuild the profile from the version's reference sample.")
    edge_rows = data["edges"]
    width = max((len(row) for row in edge_rows), default=0)
    edges = np.full((len(edge_rows), width), np.inf)
    proportions = np.full((len(edge_rows), width + 1), float(data["epsilon"]))
    for i, (row, props) in enumerate(zip(edge_rows, data["proportions"], strict=True)):
        edges[i, : len(row)] = row
        proportions[i, : len(props)] = props
    counts = data["class_counts"]
    return ReferenceProfile(
        kind=InputKind(data["kind"]), feature_names=tuple(data["feature_names"]),
        n_reference=int(data["n_reference"]), edges=edges, proportions=proportions,
        sample=np.asarray(data["sample"], dtype=np.float64).T.copy(),
        mean=np.asarray(data["mean"], dtype=np.float64), std=np.asarray(data["std"], dtype=np.float64),
        minimum=np.asarray(data["min"], dtype=np.float64), maximum=np.asarray(data["max"], dtype=np.float64),
        quantiles=np.asarray(data["quantiles"], dtype=np.float64),
        class_counts=None if counts is None else np.asarray(counts, dtype=np.int64),
        epsilon=float(data["epsilon"]),
    )


def bin_proportions(x: FloatArray, edges: FloatArray, epsilon: float) -> FloatArray:
    """Per-feature bin proportions ``[F, bins]`` of ``x`` ``[n, F]``, floored at ``epsilon``.

    A value falls in bin ``i`` when exactly ``i`` interior edges are <= it, so bins are ``[e_i, e_i+1)``;
    one broadcast comparison bins every feature at once (edges are few, so this beats per-feature searches).
    """
    n, n_features = x.shape
    n_bins = edges.shape[1] + 1
    idx = (x[:, :, None] >= edges[None, :, :]).sum(axis=2)
    flat = idx + np.arange(n_features) * n_bins
    counts = np.bincount(flat.ravel(), minlength=n_features * n_bins).reshape(n_features, n_bins)
    proportions: FloatArray = np.maximum(counts / max(n, 1), epsilon)
    return proportions


def _quantile_edges(x: FloatArray, bins: int) -> FloatArray:
    qs = np.quantile(x, np.arange(1, bins) / bins, axis=0).T
    # Discrete or constant features repeat quantiles; a repeated edge would make an always-empty bin, so
    # repeats become +inf padding and the finite edges move to the front, still sorted.
    dup = np.zeros_like(qs, dtype=bool)
    dup[:, 1:] = qs[:, 1:] == qs[:, :-1]
    return np.sort(np.where(dup, np.inf, qs), axis=1)


def _feature_names(kind: InputKind, width: int, given: list[str] | None) -> tuple[str, ...]:
    if given is not None:
        if len(given) != width:
            raise ValueError(f"{len(given)} feature names for {width} features")
        return tuple(given)
    if kind is InputKind.IMAGE:
        return IMAGE_FEATURES
    return tuple(f"x{i}" for i in range(width))


def _class_counts(probabilities: npt.ArrayLike | None, labels: npt.ArrayLike | None,
                  n_classes: int | None, n: int) -> IntArray | None:
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        k = probs.shape[1] if n_classes is None else n_classes
        predicted = probs.argmax(axis=1)
    elif labels is not None:
        predicted = np.asarray(labels, dtype=np.int64)
        k = int(predicted.max()) + 1 if n_classes is None else n_classes
    else:
        return None
    if predicted.shape != (n,):
        raise ValueError("class probabilities or labels need one row per reference input")
    if predicted.min() < 0 or predicted.max() >= k:
        raise ValueError(f"class indices must lie in [0, {k})")
    return np.bincount(predicted, minlength=k).astype(np.int64)
