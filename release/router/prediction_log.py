"""The prediction logger: publishes prediction records to ``prediction-logs`` for drift monitoring.

Records go through a bounded buffer and are published in batches, one event per model and batch, by a background
thread, off the request path: offering a record never blocks or fails a prediction; a full buffer (or a failed
publish) drops records and counts them.
"""

from __future__ import annotations

import threading
from collections import deque

import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from release.db import session_scope
from release.ports import EventBus
from schemas.errors import ReleaseError
from schemas.events import EventType, Topic, make_event
from schemas.predictions import PredictionBatch, PredictionRecord

log = structlog.get_logger(__name__)


class PredictionLogger:
    """Bounded, batched, asynchronous publisher of prediction records. Never blocks a request."""

    def __init__(self, *, engine: Engine, bus: EventBus, capacity: int = 10_000, batch: int = 500,
                 interval_s: float = 0.5, dropped: Counter | None = None) -> None:
        self._engine = engine
        self._bus = bus
        self._buffer: deque[PredictionRecord] = deque()
        self._capacity = capacity
        self._batch = batch
        self._interval_s = interval_s
        self._dropped = dropped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self.published = 0

    def start(self) -> None:
        """Start the background publisher."""
        self._thread.start()

    def offer(self, record: PredictionRecord) -> None:
        """Queue a record, or drop and count it when the buffer is full."""
        if len(self._buffer) >= self._capacity:
            if self._dropped is not None:
                self._dropped.inc()
            return
        self._buffer.append(record)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Publish what is buffered, one event per model and batch."""
        while self._buffer:
            chunk: list[PredictionRecord] = []
            while self._buffer and len(chunk) < self._batch:
                chunk.append(self._buffer.popleft())
            by_model: dict[str, list[PredictionRecord]] = {}
            for record in chunk:
                by_model.setdefault(record.model, []).append(record)
            try:
                with session_scope(self._engine) as s:
                    for records in by_model.values():
                        data = PredictionBatch(records=records).model_dump(mode="json")
                        self._bus.publish(make_event(EventType.PREDICTIONS_LOGGED, data),
                                          topic=Topic.PREDICTION_LOGS, session=s)
                self.published += len(chunk)
            except ReleaseError as error:
                log.warning("prediction_log.publish_failed", error=str(error), dropped=len(chunk))
                if self._dropped is not None:
                    self._dropped.inc(len(chunk))

    def close(self) -> None:
        """Stop after publishing what is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
