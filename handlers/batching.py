"""Dynamic batching: a bounded queue in front of one worker thread that runs the model a batch at a time.

The event loop only enqueues and awaits futures, so it never blocks on the model. The worker takes the first
waiting request, then gathers more until the batch is full or the first request has waited
``max_batch_delay_s``; it stops waiting early when no other request is on its way (so a lone request never pays
the delay). A full queue refuses at once (``QUEUE_FULL``); a request not answered within its timeout gets
``REQUEST_TIMEOUT`` and is skipped if its batch has not started.

Requests come either from the event loop of the same process (``infer``: an asyncio future per request, results
handed back on the loop) or from other processes (``submit`` with a ``Reply`` of the caller's making, results
handed to the ``Deliver`` function given to ``start_detached``); the worker does not care which.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from handlers.base import InferenceRequest, InferenceResult
from handlers.metrics import PodMetrics
from schemas.errors import Reason, ReleaseError, TemporaryError

RunBatch = Callable[[Sequence[InferenceRequest]], Sequence[InferenceResult | ReleaseError]]


class Reply(Protocol):
    """Where one request's answer goes; ``done()`` is true once nobody waits for it (answered or timed out)."""

    def done(self) -> bool:
        """Whether the answer is no longer wanted."""


Deliver = Callable[[Sequence[Reply], Sequence[InferenceResult | ReleaseError]], None]


@dataclass(slots=True, eq=False)
class _Job:
    request: InferenceRequest
    future: Reply
    enqueued: float


def _resolve(futures: Sequence[Reply], results: Sequence[InferenceResult | ReleaseError]) -> None:
    for future, result in zip(futures, results, strict=True):
        assert isinstance(future, asyncio.Future)
        if future.done():
            continue
        if isinstance(result, ReleaseError):
            future.set_exception(result)
        else:
            future.set_result(result)


def _no_one_else() -> int:
    return 0


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
        self._deliver: Deliver | None = None
        # Requests whose HTTP handling started but that are not queued yet; written by the event loop only.
        self.arriving = 0
        # The same count for requests being read by other processes (``start_detached``).
        self.arriving_elsewhere: Callable[[], int] = _no_one_else
        metrics.queue_depth.set_function(self._queue.qsize)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker; results are handed back on ``loop``."""

        def deliver(futures: Sequence[Reply], results: Sequence[InferenceResult | ReleaseError]) -> None:
            loop.call_soon_threadsafe(_resolve, futures, results)

        self.start_detached(deliver)

    def start_detached(self, deliver: Deliver) -> None:
        """Start the worker; each batch's results go to ``deliver`` (called on the worker thread)."""
        self._deliver = deliver
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch slot."""
        return self._queue.qsize()

    async def infer(self, request: InferenceRequest, *, timeout_s: float) -> InferenceResult:
        """Queue one request and wait for its result (or its error) at most ``timeout_s`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InferenceResult] = loop.create_future()
        self.submit(request, future)
        timer = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    def submit(self, request: InferenceRequest, reply: Reply) -> None:
        """Queue one request (from any thread); a full queue raises ``TemporaryError(QUEUE_FULL)`` at once."""
        try:
            self._queue.put_nowait(_Job(request, reply, time.perf_counter()))
        except queue.Full:
            raise TemporaryError(f"the request queue is full ({self._queue.maxsize} waiting); retry later",
                                 reason=Reason.QUEUE_FULL, delay=0.1) from None

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
                if wait <= 0 or not (self.arriving or self.arriving_elsewhere()):
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
        assert self._deliver is not None
        self._deliver([job.future for job in live], results)
