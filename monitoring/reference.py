"""The drift baseline of a model version, built from the reference sample its artifact ships.

The profile is built at registration, but by the drift monitor rather than by intake: intake belongs to the
release core, which must not import ``monitoring`` (an import-linter contract keeps it that way). So the
monitor builds it from the same ``model.registered`` event the controller reacts to
(``DriftMonitor.handle_registration``, on its ``drift-profiles`` subscription) and stores the result with
``registry.set_reference_profile``, so each version is profiled once per installation. A version registered
before the monitor ran is profiled the first time its predictions arrive.

Which sample: the manifest's ``reference`` npz (array ``x``), else its ``eval`` npz (the gates' inputs are the
next best picture of what the model expects). The class distribution comes from the same file's predicted
probabilities (``probabilities``) or labels (``y``) when present: the control plane never runs the model, so
true labels stand in for predictions, which is close for any model that passed its gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from monitoring.profile import build_profile
from release.samples import read_sample
from schemas.manifest import Manifest


def reference_file(manifest: Manifest) -> str | None:
    """The artifact file the baseline is built from: ``reference``, else ``eval``, else none."""
    return manifest.reference or manifest.eval


def profile_for_version(folder: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The stored form of the version's reference profile, or None when its artifact ships no sample.

    ``folder`` is the version's materialised artifact (``release.artifacts.materialize``): a model folder, or a
    ``.mar`` whose sample is one of its extra files.
    """
    spec = Manifest.model_validate(manifest)
    name = reference_file(spec)
    if name is None:
        return None
    # Capped and pickle-free: the npz is untrusted input from the bucket.
    arrays = read_sample(folder, name)
    if "x" not in arrays:
        return None
    x = arrays["x"]
    probabilities = arrays.get("probabilities")
    labels = _class_labels(arrays["y"]) if probabilities is None and "y" in arrays else None
    n_classes = len(spec.labels) if spec.labels else None
    return build_profile(x, probabilities=probabilities, labels=labels, n_classes=n_classes).to_dict()


def _class_labels(y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    # Regression targets and one-hot rows are not class indices: no class baseline from them.
    return y if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) else None
