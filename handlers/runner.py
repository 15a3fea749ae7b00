"""Run a torch module on the pod's device: placement, precision, no-grad, and fixed batch buckets when compiled.

Handlers hand it CPU tensors and get CPU float32 tensors back; what the device is, whether weights are fp16 or
bf16, and whether the module is compiled (``torch.compile``, or CUDA graphs through ``reduce-overhead``) stay here.
Compiled modules see only power-of-two batch sizes, so each bucket is compiled once, at warm-up.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to and including ``max_batch_size``."""
    sizes = [1]
    while sizes[-1] < max_batch_size:
        sizes.append(min(sizes[-1] * 2, max_batch_size))
    return sizes


class ModelRunner:
    """Callable wrapper that moves inputs in, runs the module without autograd, and brings outputs back."""

    def __init__(self, module: nn.Module, *, device: torch.device, dtype: torch.dtype, max_batch_size: int,
                 channels_last: bool = False, compile_mode: str = "none"):
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.buckets = bucket_sizes(max_batch_size) if compile_mode != "none" else []
        module = module.to(device=device, dtype=dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module: Any = module if compile_mode == "none" else torch.compile(module, mode=compile_mode,
                                                                               dynamic=False)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            tensor = tensor.to(device=self.device, dtype=self.dtype, non_blocking=True)
            if self.channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            return tensor
        return tensor.to(device=self.device, non_blocking=True)

    def _bucket(self, size: int) -> int:
        return next((b for b in self.buckets if b >= size), size)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs of the module as CPU float32 (or integer) tensors, one per module output."""
        size = inputs[0].shape[0]
        padded = self._bucket(size) if self.buckets else size
        if padded != size:
            inputs = tuple(torch.cat([t, t[-1:].expand(padded - size, *t.shape[1:])]) for t in inputs)
        with torch.inference_mode():
            result = self.module(*(self._to_device(t) for t in inputs))
        outputs = result if isinstance(result, tuple | list) else (result,)
        return tuple(_to_host(o[:size]) for o in outputs)

    def warm(self, make_inputs: Any) -> None:
        """Run every batch bucket once (or batch size 1 when not compiled) with inputs from ``make_inputs(n)``."""
        for size in self.buckets or [1]:
            self(*make_inputs(size))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor.cpu()
