"""Shared memory between one HTTP front and the model process, so request tensors cross without a pipe.

Each front owns one ``Arena``: an anonymous shared mapping made before the fork, so both processes see the same
bytes. The front copies a request's decoded tensors into a block of it and sends only where they lie; the model
process reads them in place (``np.ndarray`` views, no copy until the batch is stacked). A tensor through a pipe
is copied into the kernel and out again and costs the model process a read per request; through the arena it
costs the front one ``memcpy`` and the model process nothing.

Only the front allocates and frees, and it frees a block when the model process has answered that request
(every request it receives is answered, even one that timed out), so the model process never reads a block
that was handed out again. Blocks are taken in ring order; a block freed out of order is reclaimed once the
blocks before it are. When the arena is full the front sends the tensors through the pipe instead.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

ALIGN = 64  # a cache line: no two blocks share one, and every tensor starts aligned for any dtype


class TensorSlot(NamedTuple):
    """Where one tensor lies in its block, and what it is."""

    name: str
    offset: int  # from the block's start
    dtype: str   # numpy's ``dtype.str``
    shape: tuple[int, ...]


class Placement(NamedTuple):
    """Where a request's tensors lie: the block's offset in the arena and each tensor's slot in it."""

    start: int
    tensors: list[TensorSlot]


def _aligned(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


class Arena:
    """A ring of variable-size blocks in a shared mapping; ``place`` on the front, ``view`` in the model process."""

    def __init__(self, size: int):
        self.size = _aligned(size)
        self.memory = mmap.mmap(-1, self.size)  # anonymous and MAP_SHARED: the forked model process sees it
        self._live: OrderedDict[int, tuple[int, bool]] = OrderedDict()  # offset -> (end, freed), ring order
        self._head = 0  # where the next block starts, unless it must wrap to 0

    @property
    def used_blocks(self) -> int:
        """Blocks handed out and not reclaimed yet."""
        return len(self._live)

    def _take(self, size: int) -> int | None:
        if not self._live:
            start = 0 if size <= self.size else None
        else:
            oldest = next(iter(self._live))
            newest = next(reversed(self._live))
            if newest >= oldest:  # live blocks lie in [oldest, head): room after head, else from 0 to oldest
                start = self._head if self._head + size <= self.size else (0 if size <= oldest else None)
            else:  # wrapped: live blocks lie in [oldest, end) and [0, head)
                start = self._head if self._head + size <= oldest else None
        if start is None:
            return None
        self._head = start + size
        self._live[start] = (start + size, False)
        return start

    def place(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> Placement | None:
        """Copy ``tensors`` into one new block; None when they do not fit now (send them another way)."""
        layout = []
        total = 0
        for name, array in tensors.items():
            layout.append(TensorSlot(name, total, array.dtype.str, tuple(int(d) for d in array.shape)))
            total += _aligned(array.nbytes)
        start = self._take(max(total, ALIGN))
        if start is None:
            return None
        for slot, array in zip(layout, tensors.values(), strict=True):
            target = np.ndarray(array.shape, dtype=array.dtype, buffer=self.memory, offset=start + slot.offset)
            np.copyto(target, array, casting="no")
        return Placement(start, layout)

    def free(self, start: int) -> None:
        """The model process is done with the block at ``start``; reclaim it and any freed blocks after it."""
        end, _ = self._live[start]
        self._live[start] = (end, True)
        while self._live:
            first, (_, freed) = next(iter(self._live.items()))
            if not freed:
                break
            del self._live[first]

    def view(self, placement: Placement) -> dict[str, np.ndarray[Any, Any]]:
        """The placed tensors as arrays over the shared bytes (valid until the front frees the block)."""
        start = placement.start
        return {slot.name: np.ndarray(slot.shape, dtype=np.dtype(slot.dtype), buffer=self.memory,
                                      offset=start + slot.offset)
                for slot in placement.tensors}

