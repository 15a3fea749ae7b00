"""``tabular``: named tensors in, named tensors out; requests are concatenated along their first dimension."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from handlers.base import Handler, HandlerContext, InferenceRequest, InferenceResult
from handlers.builtin.common import require_manifest, split_rows
from handlers.models import load_model
from handlers.runner import ModelRunner
from handlers.tensors import NUMPY_DTYPES, bad_request
from schemas.manifest import TensorSpec


@dataclass(frozen=True, slots=True)
class TabularBatch:
    """Stacked model inputs, and how many rows each request contributed."""

    tensors: tuple[torch.Tensor, ...]
    sizes: list[int]


class TabularHandler(Handler):
    """Feeds the manifest's inputs, in order, to the model; maps its outputs to the manifest's output names."""

    runner: ModelRunner
    input_specs: list[TensorSpec]
    output_names: list[str]

    def initialize(self, context: HandlerContext) -> None:
        """Load the model and remember the tensor names the manifest declares."""
        super().initialize(context)
        manifest = require_manifest(context)
        self.input_specs = list(manifest.inputs)
        self.output_names = [spec.name for spec in manifest.outputs]
        self.runner = ModelRunner.for_context(load_model(manifest, context.model_dir), context)

    def preprocess(self, batch: Sequence[InferenceRequest]) -> TabularBatch:
        """Concatenate each input across requests, once per batch."""
        first = self.input_specs[0].name
        sizes = []
        for request in batch:
            if first not in request.inputs:
                raise bad_request("missing_input", f"missing input {first!r}", inputs=[first])
            if request.inputs[first].ndim == 0:
                raise bad_request("shape_mismatch", f"input {first!r} needs a batch dimension", input=first)
            sizes.append(int(request.inputs[first].shape[0]))
        tensors = []
        for spec in self.input_specs:
            try:
                tensors.append(self.runner.stack([request.inputs[spec.name] for request in batch]))
            except (KeyError, ValueError) as e:
                raise bad_request("shape_mismatch", f"input {spec.name!r} cannot be batched: {e}",
                                  input=spec.name) from e
        return TabularBatch(tensors=tuple(tensors), sizes=sizes)

    def inference(self, batch: TabularBatch) -> tuple[tuple[torch.Tensor, ...], list[int]]:
        """One forward pass for the whole batch."""
        return self.runner(*batch.tensors), batch.sizes

    def postprocess(self, batch: tuple[tuple[torch.Tensor, ...], list[int]]) -> list[InferenceResult]:
        """Split every output back into per-request blocks under the manifest's names."""
        outputs, sizes = batch
        if len(outputs) < len(self.output_names):
            raise RuntimeError(f"model returned {len(outputs)} outputs, the manifest declares "
                               f"{len(self.output_names)}")
        per_output = [split_rows(tensor.numpy(), sizes) for tensor in outputs[:len(self.output_names)]]
        return [InferenceResult(outputs={name: blocks[i] for name, blocks in zip(self.output_names, per_output,
                                                                                 strict=True)})
                for i in range(len(sizes))]

    def _example(self, size: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.zeros([size] + [max(d, 1) for d in spec.shape[1:]],
                                               dtype=_example_dtype(spec)))
                     for spec in self.input_specs)

    def warmup(self) -> None:
        """One forward pass per batch bucket on zeros shaped like the declared inputs."""
        self.runner.warm(self._example)


def _example_dtype(spec: TensorSpec) -> Any:
    dtype = NUMPY_DTYPES[spec.datatype]
    return np.float32 if dtype == np.dtype(object) else dtype
