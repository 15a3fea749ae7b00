"""Windows per model version: closing by count, by record time, by flush; invalid rows; class extraction."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from monitoring.windows import WindowAccumulator
from schemas.policy import DriftPolicy
from schemas.predictions import ClosedBy
from tests.monitoring.factories import T0, record

POLICY = DriftPolicy(window_size=10, window_seconds=60)


def test_closes_by_count():
    """The window_size-th record closes the window, with its rows stacked in arrival order."""
    acc = WindowAccumulator(POLICY)
    closed = acc.add(record(i, inputs=[i, 2.0 * i], predicted=i % 3) for i in range(25))
    assert [w.meta.index for w in closed] == [0, 1]
    first = closed[0]
    assert first.meta.closed_by is ClosedBy.COUNT and first.meta.records == 10
    assert first.inputs.shape == (10, 2) and first.inputs[3].tolist() == [3.0, 6.0]
    assert first.predicted.tolist() == [i % 3 for i in range(10)]
    assert (first.meta.start, first.meta.end) == (T0, T0 + timedelta(seconds=9))
    assert acc.pending(("digits", "1")) == 5


def test_closes_by_record_time():
    """A record window_seconds after the first closes the window without it and opens the next."""
    acc = WindowAccumulator(POLICY)
    assert acc.add([record(0, inputs=[1.0]), record(1, seconds=59.9, inputs=[2.0])]) == []
    (closed,) = acc.add([record(2, seconds=60.0, inputs=[3.0])])
    assert closed.meta.closed_by is ClosedBy.TIME and closed.inputs[:, 0].tolist() == [1.0, 2.0]
    assert acc.pending(("digits", "1")) == 1


def test_flush_closes_idle_windows_only():
    """flush(now) closes windows at least window_seconds old and leaves younger ones open."""
    acc = WindowAccumulator(POLICY)
    acc.add([record(0, inputs=[1.0]), record(1, seconds=30, version="2", inputs=[1.0])])
    (flushed,) = acc.flush(T0 + timedelta(seconds=75))
    assert (flushed.meta.version, flushed.meta.closed_by) == ("1", ClosedBy.FLUSH)
    assert acc.pending(("digits", "2")) == 1 and acc.flush(T0 + timedelta(seconds=80)) == []


def test_versions_have_separate_windows_and_counters():
    """Records of two versions never share a window; each version counts its windows from its own index."""
    acc = WindowAccumulator(POLICY, next_index={("digits", "2"): 7})
    closed = acc.add(record(i, version=str(1 + i % 2), inputs=[float(i)]) for i in range(20))
    assert sorted((w.meta.version, w.meta.index) for w in closed) == [("1", 0), ("2", 7)]
    assert all(set(w.inputs[:, 0] % 2) == {(int(w.meta.version) - 1) % 2} for w in closed)


def test_invalid_rows_are_counted_and_dropped():
    """Rows with NaN/inf or a width unlike the window's first row are dropped and counted as invalid."""
    acc = WindowAccumulator(POLICY)
    rows = [[1.0, 2.0], [float("nan"), 1.0], [1.0], [float("inf"), 0.0]] + [[0.0, 0.0]] * 6
    (w,) = acc.add(record(i, inputs=row, predicted=1) for i, row in enumerate(rows))
    assert (w.meta.records, w.meta.invalid_records) == (7, 3)
    assert w.inputs.shape == (7, 2) and w.predicted.size == 7


def test_features_and_outputs_are_collected():
    """Summary features go to input_features; the class comes from predicted_class or argmax(outputs)."""
    acc = WindowAccumulator(POLICY)
    recs = [record(0, features=[0.5, 0.1], outputs=[0.1, 0.7, 0.2]), record(1, inputs=[1.0, 2.0, 3.0]),
            record(2, predicted=4, outputs=[0.9, 0.1])]
    acc.add(recs)
    (w,) = acc.flush(T0 + timedelta(hours=1))
    assert w.input_features.tolist() == [[0.5, 0.1]] and w.inputs.tolist() == [[1.0, 2.0, 3.0]]
    assert w.predicted.tolist() == [1, 4]
    assert np.asarray(w.predicted).dtype == np.int64
