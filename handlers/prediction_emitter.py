"""Prediction records made by the pod itself, printed as JSON lines on stdout for a Cloud Logging sink.

With Gateway API routing no Python router sees the requests, so a pod started with ``--record-predictions``
records them (``schemas/pod_records.py`` says why stdout, and who records a request the router also saw).

Off the request path: the request side (``handlers/prediction_capture.py``) only samples and keeps references to
the body chunks; it hands a ``Captured`` exchange to ``PredictionEmitter.offer``, which puts it on a bounded
queue or, when the queue is full, drops and counts it. A background thread turns what was queued into records
(the pure ``schemas.prediction_records``, the same code the router uses) every ``interval_s``, or as soon as a
quarter of the queue is used, and prints them batched into lines of at most ``MAX_LINE_BYTES``. Nothing here
raises into a request: a record that cannot be made or printed is dropped and counted in
``pod_prediction_records_dropped_total{reason}``.
"""

from __future__ import annotations

import os
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter

from schemas.manifest import TensorSpec
from schemas.pod_records import MAX_LINE_BYTES, MAX_RECORDS_PER_LINE, POD_RECORDS_KIND
from schemas.prediction_records import Exchange, prediction_records
from schemas.predictions import PredictionRecord

log = structlog.get_logger("handlers.prediction_emitter")

DROP_REASONS = ("queue_full", "too_large", "unreadable", "write_failed")
_PREFIX = b'{"severity":"INFO","kind":"' + POD_RECORDS_KIND.encode() + b'","records":['
_SUFFIX = b"]}"


@dataclass(frozen=True)
class Captured:
    """One successful prediction as the pod answered it; bodies still in the chunks the server received."""

    style: str
    request_id: str
    group_id: str | None
    received_at: datetime
    completed_at: datetime
    latency_s: float
    request_chunks: list[bytes]
    answer_chunks: list[bytes]
    content_type: str
    binary_header: int | None


def write_stdout(line: bytes) -> None:
    """Print one line with one ``write`` per chunk the pipe takes, bypassing Python's buffered stdout."""
    view = memoryview(line + b"\n")
    while view:
        view = view[os.write(1, view):]


class PredictionEmitter:
    """Sampled, bounded, batched records of one model version, printed by a background thread."""

    def __init__(self, *, model: str, version: str, declared: tuple[TensorSpec, ...], sample_rate: float,
                 registry: CollectorRegistry, write: Callable[[bytes], None] = write_stdout, capacity: int = 256,
                 interval_s: float = 1.0, max_line_bytes: int = MAX_LINE_BYTES,
                 rng: random.Random | None = None) -> None:
        self.model, self.version, self._declared = model, version, declared
        self._rate = sample_rate
        self._write = write
        self._queue: queue.Queue[Captured] = queue.Queue(maxsize=capacity)
        self._interval_s = interval_s
        self._max_line = max_line_bytes
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        # Woken early when a quarter of the queue is used, so a busy pod never fills it between two intervals.
        self._wake = threading.Event()
        self._wake_at = max(1, capacity // 4)
        self._lock = threading.Lock()  # one flush at a time: the thread's, or close()'s last one
        self._thread = threading.Thread(target=self._run, name="prediction-emitter", daemon=True)
        self.registry = registry
        self.dropped = Counter("pod_prediction_records_dropped", "Prediction records (or whole sampled requests, "
                               "when the queue was full) the pod did not print, by reason.", ["reason"],
                               registry=registry)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.printed = Counter("pod_prediction_records_printed", "Prediction records the pod printed for the "
                               "drift monitor.", registry=registry)

    def sampled(self) -> bool:
        """Whether to record the request now arriving (the policy's ``drift.sample_rate``)."""
        return self._rate > 0 and self._rng.random() < self._rate

    def offer(self, captured: Captured) -> None:
        """Queue a sampled exchange, or drop and count it when the queue is full. Never blocks, never raises."""
        try:
            self._queue.put_nowait(captured)
        except queue.Full:
            self.dropped.labels("queue_full").inc()
            return
        if self._queue.qsize() >= self._wake_at:
            self._wake.set()

    def start(self) -> None:
        """Start the background printer."""
        self._thread.start()

    def close(self) -> None:
        """Stop after printing what is queued."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()

    def flush(self) -> int:
        """Turn everything queued into records and print them; returns how many records were printed."""
        with self._lock:
            records: list[bytes] = []
            while True:
                try:
                    captured = self._queue.get_nowait()
                except queue.Empty:
                    break
                records.extend(self._encoded(captured))
            return self._print(records)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            self.flush()

    def _encoded(self, captured: Captured) -> list[bytes]:
        try:
            made = prediction_records(self._exchange(captured))
        except Exception:  # model code wrote the answer: whatever it holds must not stop the printer
            log.warning("prediction_emitter.unreadable", request_id=captured.request_id, exc_info=True)
            self.dropped.labels("unreadable").inc()
            return []
        return [orjson.dumps(_json(record)) for record in made]

    def _exchange(self, captured: Captured) -> Exchange:
        return Exchange(model=self.model, version=self.version, request_id=captured.request_id,
                        group_id=captured.group_id, received_at=captured.received_at,
                        completed_at=captured.completed_at, latency_s=captured.latency_s,
                        request_body=b"".join(captured.request_chunks),
                        answer_body=b"".join(captured.answer_chunks),
                        style="v2" if captured.style == "v2" else "ts", content_type=captured.content_type,
                        binary_header=captured.binary_header, declared=self._declared)

    def _print(self, records: list[bytes]) -> int:
        printed = 0
        for line, count in self._lines(records):
            try:
                self._write(line)
            except OSError as error:  # a closed or full stdout loses records, never the pod
                log.warning("prediction_emitter.write_failed", error=str(error), dropped=count)
                self.dropped.labels("write_failed").inc(count)
                continue
            printed += count
        self.printed.inc(printed)
        return printed

    def _lines(self, records: list[bytes]) -> list[tuple[bytes, int]]:
        """``records`` packed into lines of at most ``max_line_bytes``; a record too large alone is dropped."""
        lines: list[tuple[bytes, int]] = []
        batch: list[bytes] = []
        size = len(_PREFIX) + len(_SUFFIX)
        for record in records:
            if len(_PREFIX) + len(record) + len(_SUFFIX) > self._max_line:
                self.dropped.labels("too_large").inc()
                continue
            if batch and (size + len(record) + 1 > self._max_line or len(batch) == MAX_RECORDS_PER_LINE):
                lines.append((_PREFIX + b",".join(batch) + _SUFFIX, len(batch)))
                batch, size = [], len(_PREFIX) + len(_SUFFIX)
            batch.append(record)
            size += len(record) + 1
        if batch:
            lines.append((_PREFIX + b",".join(batch) + _SUFFIX, len(batch)))
        return lines


def _json(record: PredictionRecord) -> object:
    return record.model_dump(mode="json", exclude_none=True)
