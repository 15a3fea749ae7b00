"""The handler contract: how a model turns a batch of requests into a batch of results.

The pod server owns HTTP, batching and errors; a handler only sees whole batches of already decoded requests
(``preprocess`` → ``inference`` → ``postprocess``) and never touches the network. Built-in handlers, handlers
shipped as code in a model directory, and TorchServe entry points all meet here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.archive import MarInfo
from schemas.manifest import Manifest

Tensors = dict[str, np.ndarray[Any, Any]]


@dataclass(slots=True, kw_only=True)
class InferenceRequest:
    """One decoded request. ``inputs`` holds validated OIP tensors; ``raw`` a non-JSON body (an image, text)."""

    id: str
    inputs: Tensors = field(default_factory=dict)
    raw: bytes | None = None
    json_body: Any = None
    content_type: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class InferenceResult:
    """One request's answer: named tensors for OIP, and/or a free-form JSON ``payload`` for ``/predictions``."""

    outputs: Tensors = field(default_factory=dict)
    payload: Any = None
    content_type: str | None = None
    status: int | None = None


@dataclass(frozen=True, kw_only=True)
class HandlerContext:
    """What a handler may know about its model and the pod it runs in."""

    name: str
    version: str
    model_dir: Path
    manifest: Manifest | None
    mar: MarInfo | None
    device: torch.device
    dtype: torch.dtype
    max_batch_size: int
    channels_last: bool = False
    compile_mode: str = "none"
    batch_workers: int = 1

    @property
    def extra(self) -> Mapping[str, Any]:
        """The manifest's free-form ``extra`` settings (empty for a bare ``.mar``)."""
        return self.manifest.extra if self.manifest is not None else {}


class Handler(ABC):
    """Base class of every handler. Subclasses implement the three batch steps; ``handle`` chains them."""

    context: HandlerContext

    def initialize(self, context: HandlerContext) -> None:
        """Load the model and whatever else the handler needs. Called once, before the pod reports ready."""
        self.context = context

    @abstractmethod
    def preprocess(self, batch: Sequence[InferenceRequest]) -> Any:
        """Turn the batch of requests into model input (typically one stacked tensor)."""

    @abstractmethod
    def inference(self, batch: Any) -> Any:
        """Run the model on the preprocessed batch."""

    @abstractmethod
    def postprocess(self, batch: Any) -> list[InferenceResult]:
        """Split the model output into one result per request, in request order."""

    def handle(self, batch: Sequence[InferenceRequest]) -> list[InferenceResult]:
        """Run one batch through the three steps and check one result came back per request."""
        results = self.postprocess(self.inference(self.preprocess(batch)))
        if len(results) != len(batch):
            raise RuntimeError(f"handler returned {len(results)} results for a batch of {len(batch)}")
        return results

    def warmup(self) -> None:  # noqa: B027 - optional hook: handlers without a model to warm skip it
        """Run the model once on synthetic input so the first real request pays no start-up cost."""
