"""Turn model inputs into the numeric feature matrix that drift is measured on.

Tabular inputs are their own features. Images are far too wide to test pixel by pixel, and pixel-level drift
is rarely what matters, so an image is summarised by a few per-image statistics (intensity level, contrast,
range, percentiles); a brightness shift or added noise moves these directly. The same function must be used
for the reference sample and for live records, which is why it lives here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

IMAGE_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)
IMAGE_FEATURES = ("mean", "std", "min", "max", *(f"p{int(q)}" for q in IMAGE_PERCENTILES))


class InputKind(StrEnum):
    """What the reference sample looked like, so live inputs get the same treatment."""

    TABULAR = "tabular"
    IMAGE = "image"


def image_summary(images: npt.ArrayLike) -> FloatArray:
    """Per-image summary features ``[n, len(IMAGE_FEATURES)]`` of images ``[n, ...]`` (any trailing shape)."""
    flat = np.asarray(images, dtype=np.float64)
    flat = flat.reshape(flat.shape[0], -1)
    # One partition pass yields all percentiles together with min and max (the 0th and 100th).
    qs = np.percentile(flat, (0.0, *IMAGE_PERCENTILES, 100.0), axis=1)
    return np.column_stack([flat.mean(axis=1), flat.std(axis=1), qs[0], qs[-1], *qs[1:-1]])


def input_kind_of(x: npt.ArrayLike) -> InputKind:
    """``[n, features]`` is tabular; ``[n, H, W]`` and ``[n, C, H, W]`` are images."""
    ndim = np.ndim(x)
    if ndim == 2:
        return InputKind.TABULAR
    if ndim in (3, 4):
        return InputKind.IMAGE
    raise ValueError(f"inputs must be [n, features], [n, H, W] or [n, C, H, W]; got {ndim} dimensions")


def featurize(x: npt.ArrayLike, kind: InputKind) -> FloatArray:
    """The feature matrix ``[n, F]`` of inputs ``x`` (rows may be flattened images when ``kind`` is IMAGE)."""
    if kind is InputKind.IMAGE:
        return image_summary(x)
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"tabular inputs must be [n, features]; got shape {arr.shape}")
    return arr
