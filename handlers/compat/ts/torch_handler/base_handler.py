"""TorchServe's ``BaseHandler``, reimplemented: what ``.mar`` handler classes derive from.

Same lifecycle and defaults as TorchServe 0.12 (``initialize`` loads ``serializedFile`` as TorchScript, or as a
state dict into the single ``nn.Module`` class of ``modelFile``; ``preprocess`` → ``inference`` →
``postprocess``; ``handle`` chains them), but weights always load with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handlers.models import load_torchscript, load_weights
from ts.context import Context
from ts.utils.util import list_classes_from_module, load_label_mapping


class BaseHandler:
    """Default TorchServe handler: tensor in, model forward, list out."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, Any] | None = None
        self.device: torch.device = torch.device("cpu")
        self.map_location = "cpu"
        self.initialized = False
        self.context: Context | None = None
        self.manifest: dict[str, Any] = {}
        self.model_pt_path: str | None = None

    def initialize(self, context: Context) -> None:
        """Load the archive's model on the pod's device and its ``index_to_name.json`` label map if any."""
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        self.context = context
        self.manifest = context.manifest
        model_dir = Path(properties["model_dir"])
        model = self.manifest.get("model", {})
        serialized = model.get("serializedFile")
        self.model_pt_path = str(model_dir / serialized) if serialized else None
        if model.get("modelFile"):
            self.model = self._load_pickled_model(str(model_dir), model["modelFile"], self.model_pt_path)
        elif self.model_pt_path is not None:
            self.model = load_torchscript(Path(self.model_pt_path))
        if self.model is not None:
            self.model.to(self.device)
            self.model.eval()
        self.mapping = load_label_mapping(str(model_dir / "index_to_name.json"))
        self.initialized = True

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: str | None) -> nn.Module:
        """Instantiate the one ``nn.Module`` class of ``model_file`` and load the state dict into it."""
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        module = importlib.import_module(Path(model_file).stem)
        classes = list_classes_from_module(module, nn.Module)
        if len(classes) != 1:
            raise ValueError(f"{model_file} must define exactly one nn.Module class, it defines {len(classes)}")
        model: nn.Module = classes[0]()
        if model_pt_path is not None:
            model.load_state_dict(load_weights(Path(model_pt_path)))
        return model

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """The request bodies as one tensor."""
        rows = [row.get("data", row.get("body")) if isinstance(row, dict) else row for row in data]
        return torch.as_tensor(rows, device=self.device)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The model's forward pass, without autograd."""
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        """One JSON-able answer per request."""
        return data.tolist()  # type: ignore[no-any-return]

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        """Run a batch: ``preprocess`` → ``inference`` → ``postprocess``."""
        self.context = context
        return self.postprocess(self.inference(self.preprocess(data)))
