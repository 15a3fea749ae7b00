"""What the HTTP front processes count in shared memory for the model process (``--http-workers N``).

Made before the fork, so every process sees the same memory. Each front writes only its own ``FrontCounts``
row: requests being read or decoded (``arriving``), inference requests not answered yet (``in_flight``), requests
sent to the model process (``sent``) and arena blocks held (``blocks``). The model process reads them: the
batcher stops waiting for more of a batch when none is on its way, and the in-flight and arena gauges are their
sums. Answered requests are counted in ``requests`` (``request_metrics``), exported by the model process.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp

from handlers.request_metrics import SharedRequestMetrics


class FrontCounts(ctypes.Structure):
    """One front's row (written by that front only)."""

    _fields_ = [("arriving", ctypes.c_int64), ("in_flight", ctypes.c_int64), ("sent", ctypes.c_int64),
                ("blocks", ctypes.c_int64)]
    arriving: int
    in_flight: int
    sent: int
    blocks: int


class FrontCounters:
    """Every front's counts, and how many requests the model process has read from them (its own count, not shared)."""

    def __init__(self, fronts: int):
        table = mp.get_context("fork").RawArray(FrontCounts, fronts)
        # Rows made once: indexing a ctypes array of structures builds a new wrapper each time.
        self._rows: list[FrontCounts] = [table[front] for front in range(fronts)]
        self._received = 0
        self.requests = SharedRequestMetrics(fronts)

    def of(self, front: int) -> FrontCounts:
        """The row ``front`` writes."""
        return self._rows[front]

    def received(self, count: int) -> None:
        """The model process read ``count`` more requests from the fronts (model process only)."""
        self._received += count

    def arriving(self) -> int:
        """Requests being decoded by a front, or sent and not yet read by the model process."""
        total = -self._received  # a loop, not sum() over a generator: the batcher asks on every submit
        for row in self._rows:
            total += row.arriving + row.sent
        return total

    def in_flight(self) -> int:
        """Inference requests received by all fronts and not answered yet."""
        return sum(row.in_flight for row in self._rows)

    def handoff_blocks(self) -> int:
        """Arena blocks the fronts hold for requests the model process has not answered yet."""
        return sum(row.blocks for row in self._rows)
