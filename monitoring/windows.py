"""Group prediction records into drift windows per (model, version).

A window closes when it holds ``policy.window_size`` records, when a record arrives ``policy.window_seconds``
or more after the window's first record (record timestamps, not the clock, so replays and slow consumers
cut the same windows), or when ``flush(now)`` finds it that old on an idle stream. Records stay in the
order they arrive; a late record joins whichever window is open (a window's ``start`` is its first
record's timestamp, its ``end`` the latest one seen). This module only collects: the
statistics are ``monitoring.measure``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from monitoring.features import FloatArray, IntArray
from schemas.policy import DriftPolicy
from schemas.predictions import ClosedBy, DriftWindow, PredictionRecord

WindowKey = tuple[str, str]


@dataclass(frozen=True, eq=False)
class WindowData:
    """A closed window: its description plus the arrays the detectors need.

    ``inputs`` holds raw flattened inputs ``[a, d]``, ``input_features`` precomputed summary features
    ``[b, F]`` (either may have zero rows), ``predicted`` the predicted class of every valid record.
    """

    meta: DriftWindow
    inputs: FloatArray
    input_features: FloatArray
    predicted: IntArray


@dataclass
class _OpenWindow:
    index: int
    start: datetime
    end: datetime
    seen: int = 0
    invalid: int = 0
    inputs: list[FloatArray] = field(default_factory=list)
    features: list[FloatArray] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)

    def take(self, record: PredictionRecord) -> None:
        self.seen += 1
        self.end = max(self.end, record.received_at)
        row, rows = _row_of(record), self.inputs if record.inputs is not None else self.features
        # A row of another width than the window's first, or with NaN/inf, would poison every statistic of
        # the window; it is counted and dropped instead.
        if row is not None and (not np.isfinite(row).all() or (rows and rows[0].shape != row.shape)):
            self.invalid += 1
            return
        if row is not None:
            rows.append(row)
        predicted = _predicted_class(record)
        if predicted is not None:
            self.predicted.append(predicted)

    def close(self, key: WindowKey, closed_by: ClosedBy) -> WindowData:
        meta = DriftWindow(model=key[0], version=key[1], index=self.index, start=self.start,
                           end=self.end, records=self.seen - self.invalid, invalid_records=self.invalid,
                           closed_by=closed_by)
        return WindowData(meta=meta, inputs=_stack(self.inputs), input_features=_stack(self.features),
                          predicted=np.asarray(self.predicted, dtype=np.int64))


class WindowAccumulator:
    """Open windows of every model version this monitor sees; feed it records, get closed windows back.

    ``next_index`` restores each version's window counter after a restart (the alert state remembers the
    last window it judged), so window indices keep increasing and re-judged windows can be recognised.
    """

    def __init__(self, policy: DriftPolicy, *, next_index: Mapping[WindowKey, int] | None = None) -> None:
        self._size = policy.window_size
        self._span = timedelta(seconds=policy.window_seconds)
        self._next = dict(next_index or {})
        self._open: dict[WindowKey, _OpenWindow] = {}

    def add(self, records: Iterable[PredictionRecord]) -> list[WindowData]:
        """Add records in arrival order; returns the windows they closed, oldest first."""
        closed: list[WindowData] = []
        for record in records:
            key = (record.model, record.version)
            window = self._open.get(key)
            if window is not None and record.received_at - window.start >= self._span:
                closed.append(self._close(key, ClosedBy.TIME))
                window = None
            if window is None:
                window = self._open[key] = self._new_window(key, record.received_at)
            window.take(record)
            if window.seen >= self._size:
                closed.append(self._close(key, ClosedBy.COUNT))
        return closed

    def flush(self, now: datetime) -> list[WindowData]:
        """Close every window whose first record is ``window_seconds`` or more older than ``now``."""
        due = [key for key, window in self._open.items() if now - window.start >= self._span]
        return [self._close(key, ClosedBy.FLUSH) for key in due]

    def pending(self, key: WindowKey) -> int:
        """Records waiting in the open window of ``key`` (0 when none is open)."""
        window = self._open.get(key)
        return 0 if window is None else window.seen

    def _new_window(self, key: WindowKey, at: datetime) -> _OpenWindow:
        index = self._next.get(key, 0)
        self._next[key] = index + 1
        return _OpenWindow(index=index, start=at, end=at)

    def _close(self, key: WindowKey, closed_by: ClosedBy) -> WindowData:
        return self._open.pop(key).close(key, closed_by)


def _row_of(record: PredictionRecord) -> FloatArray | None:
    values = record.inputs if record.inputs is not None else record.input_features
    return None if values is None else np.asarray(values, dtype=np.float64)


def _predicted_class(record: PredictionRecord) -> int | None:
    if record.predicted_class is not None:
        return record.predicted_class
    if record.outputs is not None and len(record.outputs) > 1:
        return int(np.argmax(record.outputs))
    return None


def _stack(rows: list[FloatArray]) -> FloatArray:
    return np.vstack(rows) if rows else np.empty((0, 0))
