"""Pieces the built-in handlers share: the manifest they require, batch splitting, and top-k classification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from handlers.base import Handler, HandlerContext, InferenceResult
from schemas.errors import ArtifactRejected, Reason
from schemas.manifest import Manifest

if TYPE_CHECKING:
    from handlers.runner import ModelRunner


def require_manifest(context: HandlerContext) -> Manifest:
    """Built-in handlers read their model and tensor names from a ``manifest.json``; a bare ``.mar`` has none."""
    if context.manifest is None:
        raise ArtifactRejected("built-in handlers need a manifest.json", reason=Reason.UNKNOWN_HANDLER)
    return context.manifest


def split_rows(array: np.ndarray[Any, Any], sizes: Sequence[int]) -> list[np.ndarray[Any, Any]]:
    """Cut a stacked batch back into per-request blocks of ``sizes`` rows."""
    if len(sizes) == 1:
        return [array]
    return np.split(array, np.cumsum(sizes)[:-1])


@dataclass(frozen=True, slots=True)
class ClassifierBatch:
    """Model input for a batch of items, how many items each request sent, and which sent one bare item."""

    model_input: torch.Tensor
    sizes: list[int]
    unwrap: list[bool]


@dataclass(frozen=True, slots=True)
class ClassifierScores:
    """Class probabilities for every item of the batch, with the batch's bookkeeping."""

    probabilities: np.ndarray[Any, Any]
    sizes: list[int]
    unwrap: list[bool]


class Classifier:
    """Turns class scores into probabilities and top-k ``{label: probability}`` answers."""

    def __init__(self, *, labels: Sequence[str] | None, top_k: int, apply_softmax: bool, output_name: str):
        self.labels = list(labels) if labels else None
        self.top_k = top_k
        self.apply_softmax = apply_softmax
        self.output_name = output_name

    def probabilities(self, scores: torch.Tensor) -> np.ndarray[Any, Any]:
        """Rows of class probabilities."""
        probabilities = torch.softmax(scores.float(), dim=-1) if self.apply_softmax else scores.float()
        return probabilities.numpy()

    def _label(self, index: int) -> str:
        return self.labels[index] if self.labels and index < len(self.labels) else str(index)

    def results(self, probabilities: np.ndarray[Any, Any], sizes: Sequence[int],
                unwrap: Sequence[bool]) -> list[InferenceResult]:
        """One result per request: the probability rows as a tensor, and top-k per item as the payload.

        A request that sent one bare item (``unwrap``: an image body, one text) gets its top-k map unwrapped,
        the way TorchServe answers a single prediction.
        """
        k = min(self.top_k, probabilities.shape[-1])
        best = np.argsort(-probabilities, axis=-1)[:, :k]
        answers = [{self._label(int(i)): float(row[i]) for i in top} for row, top in zip(probabilities, best,
                                                                                          strict=True)]
        results = []
        start = 0
        for size, single in zip(sizes, unwrap, strict=True):
            payload: Any = answers[start] if single else answers[start:start + size]
            results.append(InferenceResult(outputs={self.output_name: probabilities[start:start + size]},
                                           payload=payload))
            start += size
        return results


class ClassifierHandler(Handler):
    """What every built-in classifier shares once its ``preprocess`` has built a ``ClassifierBatch``."""

    runner: ModelRunner
    classifier: Classifier

    def inference(self, batch: ClassifierBatch) -> ClassifierScores:
        """Class probabilities for every item of the batch in one forward pass."""
        return ClassifierScores(self.classifier.probabilities(self.runner(batch.model_input)[0]), batch.sizes,
                                batch.unwrap)

    def postprocess(self, batch: ClassifierScores) -> list[InferenceResult]:
        """Per request: the probability rows, and one ``{label: probability}`` top-k map per item."""
        return self.classifier.results(batch.probabilities, batch.sizes, batch.unwrap)
