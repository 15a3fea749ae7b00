"""Dynamic batching: a bounded queue in front of one worker thread that runs the model a batch at a time.

The event loop enqueues and awaits futures; the worker takes the first waiting request, then gathers more until
the batch is full or the first request has waited ``max_batch_delay_s``; it stops waiting early when no other
request is on its way (so a lone request never pays the delay). With ``inline`` (trusted built-in handlers only:
their time is the model's forward pass) a lone request is run on the event loop itself: nothing queued, no batch
running, none other on its way, still none after one turn of the loop. That saves the two thread hand-offs
(worker wake-up, result back to the loop) that are most of a lone request's overhead; a request that finds any
company goes to the worker as before, and batches form there. (An inline request is not cut off by its
timeout: a built-in handler's forward pass is what every other request would wait for anyway.)

A full queue refuses at once (``QUEUE_FULL``); a request not answered within its timeout gets
``REQUEST_TIMEOUT`` and is skipped if its batch has not started (its ``Reply`` still gets that error, so a caller
in another process learns the request is finished with).

With ``workers`` > 1 several threads each gather and run their own batch: while one waits for the device (torch
releases the GIL there), the next batch is gathered, stacked and launched. Only thread-safe handlers may have
more than one.

Requests come either from the event loop of the same process (``infer``: an asyncio future per request, results
handed back on the loop) or from other processes (``submit`` with a ``Reply`` of the caller's making, results
handed to the ``Deliver`` function given to ``start_detached``); the worker does not care which.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
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
    """Owns the queue and the worker threads. ``infer`` is called on the event loop; the model runs on a worker."""

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_batch_delay_s: float, queue_size: int,
                 metrics: PodMetrics, workers: int = 1, arriving_elsewhere: Callable[[], int] = _no_one_else,
                 inline: bool = False):
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._delay = max_batch_delay_s
        self._metrics = metrics
        self._capacity = queue_size
        self._jobs: deque[_Job | None] = deque()  # None: a worker's signal to stop
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"pod-batcher-{i}", daemon=True)
                         for i in range(workers)]
        self._deliver: Deliver | None = None
        # Requests whose HTTP handling started but that are not queued yet; written by the event loop only.
        self.arriving = 0
        # The same count for requests being read by other processes (``start_detached``).
        self._arriving_elsewhere = arriving_elsewhere
        self._inline = inline
        # Batches taken by workers and not finished (written under ``_changed``), and lone requests deciding
        # whether to run inline (event loop only): either means a new request is not alone.
        self._running = 0
        self._pondering = 0
        metrics.queue_depth.set_function(lambda: len(self._jobs))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker; results are handed back on ``loop``."""

        def deliver(futures: Sequence[Reply], results: Sequence[InferenceResult | ReleaseError]) -> None:
            loop.call_soon_threadsafe(_resolve, futures, results)

        self.start_detached(deliver)

    def start_detached(self, deliver: Deliver) -> None:
        """Start the worker; each batch's results go to ``deliver`` (called on the worker thread)."""
        self._deliver = deliver
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch slot."""
        return len(self._jobs)

    async def infer(self, request: InferenceRequest, *, timeout_s: float) -> InferenceResult:
        """Queue one request and wait for its result (or its error) at most ``timeout_s`` seconds."""
        if self._inline and self._alone():
            self._pondering += 1
            try:
                await asyncio.sleep(0)  # requests already read in this turn of the loop reach the queue first
            finally:
                self._pondering -= 1
            if self._alone():
                return self._run_inline(request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InferenceResult] = loop.create_future()
        self.submit(request, future)
        timer = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    def _alone(self) -> bool:
        return not (self._jobs or self._running or self._pondering or self._more_coming())

    def _run_inline(self, request: InferenceRequest) -> InferenceResult:
        started = time.perf_counter()
        self._metrics.queue_time.observe(0.0)
        self._metrics.batch_size.observe(1)
        (result,) = self._run_batch([request])
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        if isinstance(result, ReleaseError):
            raise result
        return result

    def submit(self, request: InferenceRequest, reply: Reply) -> None:
        """Queue one request (from any thread); a full queue raises ``TemporaryError(QUEUE_FULL)`` at once."""
        if not self.submit_many([(request, reply)]):
            raise self.queue_full()

    def queue_full(self) -> TemporaryError:
        """The refusal of a request that found the queue full."""
        return TemporaryError(f"the request queue is full ({self._capacity} waiting); retry later",
                              reason=Reason.QUEUE_FULL, delay=0.1)

    def submit_many(self, items: Sequence[tuple[InferenceRequest, Reply]]) -> int:
        """Queue as many requests as there is room for, in order; returns how many were queued.

        A worker is woken only when it has something to do: the queue was empty, a batch is full, or no other
        request is on its way. Otherwise it sleeps out its batch delay, not once per arriving request.
        """
        now = time.perf_counter()
        with self._changed:
            taken = items[:max(0, self._capacity - len(self._jobs))]
            if not taken:
                return 0
            was_empty = not self._jobs
            self._jobs.extend(_Job(request, reply, now) for request, reply in taken)
            if was_empty or len(self._jobs) >= self._max_batch_size or not self._more_coming():
                self._changed.notify()
            return len(taken)

    def _more_coming(self) -> bool:
        return bool(self.arriving or self._arriving_elsewhere())

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Let the workers finish what is queued, then end them."""
        alive = [thread for thread in self._threads if thread.is_alive()]
        with self._changed:
            self._jobs.extend(None for _ in alive)
            self._changed.notify_all()
        for thread in alive:
            thread.join(timeout_s)

    def _next_batch(self) -> list[_Job] | None:
        """The next batch: the first waiting request and more, until full or its delay is up; None: stop."""
        jobs = self._jobs
        with self._changed:
            while True:
                while not jobs:
                    self._changed.wait()
                first = jobs[0]
                if first is None:
                    jobs.popleft()
                    return None
                deadline = first.enqueued + self._delay
                while (len(jobs) < self._max_batch_size and jobs[-1] is not None
                       and (wait := deadline - time.perf_counter()) > 0 and self._more_coming()):
                    self._changed.wait(wait)
                batch: list[_Job] = []
                while jobs and len(batch) < self._max_batch_size and (job := jobs[0]) is not None:
                    batch.append(job)
                    jobs.popleft()
                if jobs:
                    self._changed.notify()  # more waiting: another worker may start on them now
                if batch:
                    self._running += 1
                    return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            finally:
                with self._changed:
                    self._running -= 1

    def _run(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        assert self._deliver is not None
        # A request that already timed out is not worth running.
        live = [job for job in batch if not job.future.done()]
        if len(live) < len(batch):
            late = [job.future for job in batch if job.future.done()]
            self._deliver(late, [TemporaryError("timed out before its batch ran", reason=Reason.REQUEST_TIMEOUT,
                                                delay=0.0) for _ in late])
        if not live:
            return
        for job in live:
            self._metrics.queue_time.observe(started - job.enqueued)
        self._metrics.batch_size.observe(len(live))
        results = self._run_batch([job.request for job in live])
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        self._deliver([job.future for job in live], results)
