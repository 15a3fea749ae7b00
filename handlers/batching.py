"""Dynamic batching: a bounded queue in front of one worker thread that runs the model a batch at a time.

The event loop only enqueues and awaits futures, so it never blocks on the model. The worker takes the first
waiting request, then gathers more until the batch is full or the first request has waited
``max_batch_delay_s``; it stops waiting early when no other request is on its way (so a lone request never pays
the delay). A full queue refuses at once (``QUEUE_FULL``); a request not answered within its timeout gets
``REQUEST_TIMEOUT`` and is skipped if its batch has not started.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from handlers.base import InferenceRequest, InferenceResult
from handlers.metrics import PodMetrics
from schemas.errors import Reason, ReleaseError, TemporaryError

RunBatch = Callable[[Sequence[InferenceRequest]], Sequence[InferenceResult | ReleaseError]]


@dataclass(slots=True, eq=False)
class _Job:
    request: InferenceRequest
    future: asyncio.Future[InferenceResult]
    enqueued: float


def _resolve(jobs: Sequence[_Job], results: Sequence[InferenceResult | ReleaseError]) -> None:
    for job, result in zip(jobs, results, strict=True):
        if job.future.done():
            continue
        if isinstance(result, ReleaseError):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)


def _expire(future: asyncio.Future[InferenceResult], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(TemporaryError(f"no answer within {timeout_s:g} s", reason=Reason.REQUEST_TIMEOUT,
                                            delay=timeout_s))


class Batcher:
    """Owns the queue and the worker thread. ``infer`` is called on the event loop; the model runs on the worker."""

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_batch_delay_s: float, queue_size: int,
                 metrics: PodMetrics):
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._delay = max_batch_delay_s
        self._metrics = metrics
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name="pod-batcher", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests whose HTTP handling started but that are not queued yet; written by the event loop only.
        self.arriving = 0
        metrics.queue_depth.set_function(self._queue.qsize)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker; results are handed back on ``loop``."""
        self._loop = loop
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch slot."""
        return self._queue.qsize()

    async def infer(self, request: InferenceRequest, *, timeout_s: float) -> InferenceResult:
        """Queue one request and wait for its result (or its error) at most ``timeout_s`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InferenceResult] = loop.create_future()
        try:
            self._queue.put_nowait(_Job(request, future, time.perf_counter()))
        except queue.Full:
            raise TemporaryError(f"the request queue is full ({self._queue.maxsize} waiting); retry later",
                                 reason=Reason.QUEUE_FULL, delay=0.1) from None
        timer = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Let the worker finish what is queued, then end it."""
        if self._thread.is_alive():
            self._queue.put(None, timeout=timeout_s)
            self._thread.join(timeout_s)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        batch = [first]
        deadline = first.enqueued + self._delay
        while len(batch) < self._max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                wait = deadline - time.perf_counter()
                if wait <= 0 or not self.arriving:
                    break
                try:
                    job = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = self._gather(first)
            self._run(batch)
            if stopping:
                return

    def _run(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        # A request that already timed out is not worth running.
        live = [job for job in batch if not job.future.done()]
        if not live:
            return
        for job in live:
            self._metrics.queue_time.observe(started - job.enqueued)
        self._metrics.batch_size.observe(len(live))
        results = self._run_batch([job.request for job in live])
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, live, results)
