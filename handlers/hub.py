"""The model process's side of a ``--http-workers N`` pod: every front's requests into the one batcher.

The model process is the one process every request passes through, so it does the least work per request: a
front's tensors are read in place from its arena (``Arena.view``), one ``InferBatch`` brings every request a
front decoded in one event-loop turn, and one reader thread waits on every front's pipe (one thread per front
would contend with the batch workers for the GIL). Each batch's answers go back as one ``Results`` message per
front; a request the full queue refuses is answered at once (``QUEUE_FULL``, 429 with ``Retry-After``).
"""

from __future__ import annotations

import selectors
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from prometheus_client import generate_latest

from handlers.arena import Arena
from handlers.base import InferenceResult
from handlers.batching import Reply
from handlers.channel import Channel, ChannelClosed
from handlers.dataplane import ModelRuntime
from handlers.front_counters import FrontCounters
from handlers.messages import (
    FrontMessage,
    HubMessage,
    InferBatch,
    Job,
    ModelInfo,
    ModelReady,
    PackedError,
    Results,
    ScrapeReply,
    ScrapeRequest,
)
from schemas.errors import ReleaseError

log = structlog.get_logger("handlers.hub")


@dataclass(slots=True, eq=False)
class RemoteReply:
    """A front's request in the batcher: which front and job to answer, and until when the answer is wanted."""

    front: int
    job_id: int
    deadline: float

    def done(self) -> bool:
        """Whether the front has given up on this request."""
        return time.perf_counter() > self.deadline


@dataclass(frozen=True, kw_only=True)
class FrontLink:
    """The model process's ends of one front's pipes, and the front's arena."""

    requests: Channel  # read end
    replies: Channel   # write end
    arena: Arena | None


class ModelHub:
    """Reads requests from every front into the runtime's batcher and sends each batch's answers back."""

    def __init__(self, runtime: ModelRuntime, *, links: Sequence[FrontLink], counters: FrontCounters):
        self.runtime = runtime
        self.links = links
        self._counters = counters
        handoff = runtime.metrics.handoff
        self._via_arena = handoff.labels("shared_memory")
        self._via_pipe = handoff.labels("pipe")

    def start(self, info: ModelInfo) -> None:
        """Start the batch workers and the reader thread, then tell every front the model is ready."""
        self.runtime.batcher.start_detached(self.deliver)
        threading.Thread(target=self._read, name="pod-hub", daemon=True).start()
        for front in range(len(self.links)):
            self._send(front, ModelReady(info))

    def _send(self, front: int, message: HubMessage) -> None:
        try:
            self.links[front].replies.send(message)
        except ChannelClosed:
            log.warning("pod.front_gone", front=front)

    def deliver(self, replies: Sequence[Reply], results: Sequence[InferenceResult | ReleaseError]) -> None:
        """Send one batch's results, one message per front (called on the batch worker)."""
        by_front: dict[int, Results] = {}
        for reply, result in zip(replies, results, strict=True):
            assert isinstance(reply, RemoteReply)
            answers = by_front.get(reply.front)
            if answers is None:
                answers = by_front[reply.front] = Results([], [])
            answers.job_ids.append(reply.job_id)
            answers.results.append(PackedError.of(result) if isinstance(result, ReleaseError) else result)
        for front, answers in by_front.items():
            self._send(front, answers)

    def _read(self) -> None:
        with selectors.DefaultSelector() as selector:
            for front, link in enumerate(self.links):
                selector.register(link.requests.fd, selectors.EVENT_READ, front)
            while selector.get_map():
                for key, _ in selector.select():
                    front = key.data
                    try:
                        message = self.links[front].requests.recv()
                    except ChannelClosed:
                        selector.unregister(key.fd)
                        continue
                    self._handle(front, message)

    def _handle(self, front: int, message: FrontMessage) -> None:
        if isinstance(message, InferBatch):
            self._submit(front, message.jobs)
        elif isinstance(message, ScrapeRequest):
            self._send(front, ScrapeReply(message.token, generate_latest(self.runtime.metrics.registry)))

    def _submit(self, front: int, jobs: Sequence[Job]) -> None:
        arena = self.links[front].arena
        now = time.perf_counter()
        items = [(job.restore(arena.view(job.placement) if job.placement is not None and arena is not None else None),
                  RemoteReply(front, job.job_id, now + job.timeout_s)) for job in jobs]
        self._counters.received(len(jobs))
        self._via_arena.inc(sum(1 for job in jobs if job.placement is not None))
        self._via_pipe.inc(sum(1 for job in jobs if job.placement is None and job.inputs))
        batcher = self.runtime.batcher
        queued = batcher.submit_many(items)
        if queued < len(items):
            refused = PackedError.of(batcher.queue_full())
            late = jobs[queued:]
            self._send(front, Results([job.job_id for job in late], [refused] * len(late)))

    def close(self) -> None:
        """Close the model process's pipe ends."""
        for link in self.links:
            link.requests.close()
            link.replies.close()
