"""Built-in model architectures for ``state_dict`` artifacts: weights only, the code lives here.

A ``state_dict`` artifact names one of these in ``manifest.architecture`` and gives its sizes in
``manifest.extra``; the pod builds the module and loads the weights with ``weights_only=True``, so no code ever
comes from the artifact for these formats.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from schemas.errors import ArtifactRejected, Reason

_ACTIVATIONS: Mapping[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _config_error(architecture: str, message: str) -> ArtifactRejected:
    return ArtifactRejected(f"architecture {architecture!r}: {message}", reason=Reason.MANIFEST_INVALID,
                            file="manifest.json")


def _int(config: Mapping[str, Any], key: str, architecture: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _config_error(architecture, f"extra.{key} must be a positive integer, got {value!r}")
    return value


def _output_activation(name: str | None) -> nn.Module:
    if name in (None, "none"):
        return nn.Identity()
    if name == "softmax":
        return nn.Softmax(dim=-1)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise _config_error("*", f"unknown output_activation {name!r} (softmax, sigmoid or none)")


class MLP(nn.Module):
    """Fully connected layers: ``sizes`` = [inputs, hidden..., outputs]."""

    def __init__(self, *, sizes: list[int], activation: str = "relu", output_activation: str | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(width_in, width_out))
            if index < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*layers)
        self.output = _output_activation(output_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, or probabilities when an output activation is set."""
        return self.output(self.layers(x))  # type: ignore[no-any-return]


class TextTransformer(nn.Module):
    """A small BERT-like encoder: token + position embeddings, transformer layers, mean pool, linear head."""

    def __init__(self, *, vocab_size: int, num_classes: int, d_model: int = 128, heads: int = 4, layers: int = 2,
                 max_len: int = 128, pad_id: int = 0, output_activation: str | None = None):
        super().__init__()
        self.pad_id = pad_id
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.positions = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)
        self.output = _output_activation(output_activation)
        self.scale = math.sqrt(d_model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Class scores for each sequence of token ids (``pad_id`` marks padding)."""
        padding = input_ids == self.pad_id
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.tokens(input_ids) * self.scale + self.positions(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.output(self.head(pooled))  # type: ignore[no-any-return]


def _build_mlp(config: Mapping[str, Any]) -> nn.Module:
    sizes = config.get("sizes")
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise _config_error("mlp", f"extra.sizes must be a list of at least two positive integers, got {sizes!r}")
    activation = config.get("activation", "relu")
    if activation not in _ACTIVATIONS:
        raise _config_error("mlp", f"extra.activation must be one of {sorted(_ACTIVATIONS)}")
    return MLP(sizes=sizes, activation=activation, output_activation=config.get("output_activation"))


def _build_text_transformer(config: Mapping[str, Any]) -> nn.Module:
    name = "text_transformer"
    return TextTransformer(
        vocab_size=_int(config, "vocab_size", name), num_classes=_int(config, "num_classes", name),
        d_model=_int(config, "d_model", name, 128), heads=_int(config, "heads", name, 4),
        layers=_int(config, "layers", name, 2), max_len=_int(config, "max_len", name, 128),
        output_activation=config.get("output_activation"))


ARCHITECTURES: Mapping[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "mlp": _build_mlp,
    "text_transformer": _build_text_transformer,
}


def build_architecture(name: str, config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised module of the named built-in architecture."""
    builder = ARCHITECTURES.get(name)
    if builder is None:
        raise ArtifactRejected(f"unknown architecture {name!r}; built-in ones are {sorted(ARCHITECTURES)}",
                               reason=Reason.MANIFEST_INVALID, file="manifest.json")
    return builder(config)
