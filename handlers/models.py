"""Load a verified artifact's weights into a torch module, without unpickling arbitrary objects.

TorchScript goes through ``torch.jit.load``; ``state_dict`` weights through ``torch.load(weights_only=True)``
into a built-in architecture. A pickle that needs anything beyond tensors is refused as ``UNSAFE_PICKLE``.
``safetensors`` weights are read by the ``safetensors`` library, a plain tensor format with no code path at all.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from handlers.architectures import build_architecture
from schemas.errors import ArtifactRejected, PermanentError, Reason
from schemas.manifest import Manifest, ModelFormat

WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".bin", ".safetensors")


def weights_file(manifest: Manifest) -> str:
    """The file holding the model: ``extra.model_file``, else the one listed file with a weights suffix."""
    named = manifest.extra.get("model_file")
    if isinstance(named, str):
        if named not in manifest.files:
            raise ArtifactRejected(f"extra.model_file {named!r} is not listed in files",
                                   reason=Reason.MANIFEST_INVALID, file="manifest.json")
        return named
    candidates = [name for name in manifest.files if name.endswith(WEIGHT_SUFFIXES)]
    if len(candidates) != 1:
        raise ArtifactRejected(
            f"cannot tell which file holds the model among {candidates or list(manifest.files)}; "
            "set extra.model_file", reason=Reason.MANIFEST_INVALID, file="manifest.json")
    return candidates[0]


def load_weights(path: Path) -> Mapping[str, torch.Tensor]:
    """A state dict read with ``weights_only=True``; anything else in the pickle is ``UNSAFE_PICKLE``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ArtifactRejected(f"{path.name} holds more than tensors and is refused: {e}",
                               reason=Reason.UNSAFE_PICKLE, file=path.name) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ArtifactRejected(f"{path.name} is not a torch weights file: {e}", reason=Reason.ARCHIVE_INVALID,
                               file=path.name) from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactRejected(f"{path.name} is not a state dict of tensors", reason=Reason.UNSAFE_PICKLE,
                               file=path.name)
    return state


def load_safetensors(path: Path) -> Mapping[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, never through pickle."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise ArtifactRejected(f"{path.name} is not a safetensors file: {e}", reason=Reason.ARCHIVE_INVALID,
                               file=path.name) from e


def load_torchscript(path: Path) -> nn.Module:
    """A TorchScript module on the CPU (the runner moves it)."""
    try:
        return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call,no-any-return]
    except (RuntimeError, ValueError) as e:
        raise PermanentError(f"{path.name} is not a loadable TorchScript module: {e}",
                             reason=Reason.MODEL_LOAD_FAILED) from e


def load_state_dict_model(path: Path, *, architecture: str, config: Mapping[str, Any],
                          safetensors_file: bool = False) -> nn.Module:
    """Build the named built-in architecture and load ``path`` (a weights pickle or safetensors) into it strictly."""
    module = build_architecture(architecture, config)
    weights = load_safetensors(path) if safetensors_file else load_weights(path)
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise PermanentError(f"{path.name} does not fit architecture {architecture!r}: {e}",
                             reason=Reason.MODEL_LOAD_FAILED) from e
    return module


def load_model(manifest: Manifest, model_dir: Path) -> nn.Module:
    """The artifact's model, in eval mode, on the CPU."""
    path = model_dir / weights_file(manifest)
    if manifest.format is ModelFormat.TORCHSCRIPT:
        module = load_torchscript(path)
    elif manifest.format in (ModelFormat.STATE_DICT, ModelFormat.SAFETENSORS):
        assert manifest.architecture is not None  # the manifest's own validation guarantees it
        module = load_state_dict_model(path, architecture=manifest.architecture, config=manifest.extra,
                                       safetensors_file=manifest.format is ModelFormat.SAFETENSORS)
    else:
        raise ArtifactRejected(f"format {manifest.format} has no built-in loader", reason=Reason.MANIFEST_INVALID,
                               file="manifest.json")
    return module.eval()
