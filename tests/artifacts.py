"""Building artifacts the way users upload them: model files plus a manifest listing their sizes and sha256."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


class DigitsMLP(torch.nn.Module):
    """A small classifier for scikit-learn's 8x8 digits (64 inputs, 10 classes)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def torchscript_bytes(model: torch.nn.Module | None = None) -> bytes:
    """A TorchScript file of ``model`` (a fresh DigitsMLP by default)."""
    model = model or DigitsMLP()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model.eval()), buffer)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz archive of the given arrays."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def manifest_for(name: str, version: str, files: dict[str, bytes], **overrides: Any) -> dict[str, Any]:
    """A valid manifest v1 listing ``files`` with their real sizes and digests."""
    manifest: dict[str, Any] = {
        "name": name, "version": version, "format": "torchscript", "handler": "tabular",
        "files": {p: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in files.items()},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "labels": [str(i) for i in range(10)],
    }
    manifest.update(overrides)
    return manifest


def write_artifact(bucket: Path, name: str, version: str, files: dict[str, bytes],
                   manifest: dict[str, Any] | None = None, *, with_manifest: bool = True) -> dict[str, Any]:
    """Write a model directory into a bucket folder (manifest last, as uploaders usually do)."""
    manifest = manifest if manifest is not None else manifest_for(name, version, files)
    root = bucket / "models" / name / version
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    if with_manifest:
        (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest
