"""Run a torch module on the pod's device: placement, precision, no-grad, and fixed batch buckets when compiled.

Handlers hand it CPU tensors and get CPU float32 tensors back; what the device is, whether weights are fp16 or
bf16, and whether the module is compiled (``torch.compile``, or CUDA graphs through ``reduce-overhead``) stay here.
Compiled modules see only power-of-two batch sizes, so each bucket is compiled once, at warm-up.

When the pod runs several batches at once (``--batch-workers``), each worker thread gets its own CUDA stream and
inputs go to the GPU from pinned memory, so one batch's copy in overlaps another's forward pass instead of
queueing behind it on the default stream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from handlers.base import HandlerContext

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
                 channels_last: bool = False, compile_mode: str = "none", stream_per_thread: bool = False):
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.buckets = bucket_sizes(max_batch_size) if compile_mode != "none" else []
        module = module.to(device=device, dtype=dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module: Any = module if compile_mode == "none" else torch.compile(module, mode=compile_mode,
                                                                               dynamic=False)
        self._overlap = stream_per_thread and device.type == "cuda"
        self._local = threading.local()

    @classmethod
    def for_context(cls, module: nn.Module, context: HandlerContext, *,
                    compile_mode: str | None = None) -> ModelRunner:
        """A runner placed and tuned the way the pod's settings (in ``context``) say."""
        return cls(module, device=context.device, dtype=context.dtype, max_batch_size=context.max_batch_size,
                   channels_last=context.channels_last,
                   compile_mode=context.compile_mode if compile_mode is None else compile_mode,
                   stream_per_thread=context.batch_workers > 1)

    def _stream(self) -> Any:
        if not self._overlap:
            return nullcontext()
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return torch.cuda.stream(stream)

    def stack(self, parts: Sequence[np.ndarray[Any, Any]]) -> torch.Tensor:
        """Per-request arrays joined along their first dimension as one CPU tensor, pinned when batches overlap.

        Raises ``ValueError`` when the parts' other dimensions differ.
        """
        if len(parts) == 1 and not self._overlap:
            part = parts[0]
            # Binary OIP tensors arrive as read-only views of the body; torch wants memory it may write.
            return torch.from_numpy(part if part.flags.writeable else part.copy())
        dtype = np.result_type(*parts)
        if not self._overlap:
            return torch.from_numpy(np.concatenate(parts, dtype=dtype))
        # Stacked straight into pinned memory: the copy to the GPU then needs no second host copy.
        shape = (sum(int(part.shape[0]) for part in parts), *parts[0].shape[1:])
        out = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype, pin_memory=True)
        np.concatenate(parts, out=out.numpy())
        return out

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the device, in the weights' precision (floats) and memory format."""
        if self._overlap and not tensor.is_pinned():
            tensor = tensor.pin_memory()  # a pageable copy would block this thread and serialise the streams
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
        with torch.inference_mode(), self._stream():
            result = self.module(*(self.to_device(t) for t in inputs))
            outputs = result if isinstance(result, tuple | list) else (result,)
            # Inside the stream's scope: copying out waits for this stream's work only.
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
