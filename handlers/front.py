"""An HTTP front process of a ``--http-workers N`` pod: the same routes, inference done by the model process.

A front listens on the pod's port (``SO_REUSEPORT``: the kernel spreads connections over the fronts), runs
``app.PodApi`` over a ``FrontRuntime`` and hands decoded requests to the model process (``hub.ModelHub``) in
``messages.InferBatch`` messages: requests decoded in the same event-loop turn travel together, their tensors in
the front's shared-memory ``Arena`` when they fit. A reader thread settles each request's future when its
answer comes back in ``Results``. If the model process goes away, every waiting request fails and the front exits.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import structlog

from handlers.app import PodApi
from handlers.arena import Arena
from handlers.base import InferenceRequest, InferenceResult
from handlers.channel import Channel, ChannelClosed
from handlers.draining_server import DrainingServer, uvicorn_config
from handlers.front_counters import FrontCounters, FrontCounts
from handlers.messages import (
    InferBatch,
    Job,
    ModelInfo,
    ModelReady,
    PackedError,
    Results,
    ScrapeReply,
    ScrapeRequest,
)
from handlers.settings import PodSettings
from schemas.errors import Reason, ReleaseError, TemporaryError

log = structlog.get_logger("handlers.front")
SCRAPE_TIMEOUT_S = 10.0


def model_process_gone() -> TemporaryError:
    """The answer to requests the model process can no longer take."""
    return TemporaryError("the model process is gone", reason=Reason.UNAVAILABLE, delay=1.0)


class RemoteBatcher:
    """The batcher as a front sees it: requests go to the model process, answers come back by job id."""

    def __init__(self, *, requests: Channel, counts: FrontCounts, arena: Arena | None):
        self._requests = requests
        self._counts = counts
        self._arena = arena
        self._ids = itertools.count()
        self._outbox: list[Job] = []
        self._held: dict[int, int] = {}  # job id -> arena block, until the model process answers that job
        self.pending: dict[int, asyncio.Future[InferenceResult]] = {}

    @property
    def arriving(self) -> int:
        """Requests of this front being read or decoded (shared with the batcher)."""
        return self._counts.arriving

    @arriving.setter
    def arriving(self, value: int) -> None:
        self._counts.arriving = value

    @property
    def depth(self) -> int:
        """Requests of this front waiting for an answer."""
        return len(self.pending)

    async def infer(self, request: InferenceRequest, *, timeout_s: float) -> InferenceResult:
        """Send one request to the model process and wait for its answer at most ``timeout_s`` seconds."""
        job_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InferenceResult] = loop.create_future()
        self.pending[job_id] = future
        placement = self._arena.place(request.inputs) if self._arena is not None and request.inputs else None
        if placement is not None:
            self._held[job_id] = placement.start
            self._counts.blocks = len(self._held)
        self._outbox.append(Job.of(job_id, request, placement=placement, timeout_s=timeout_s))
        if len(self._outbox) == 1:
            loop.call_soon(self._flush)
        self._counts.sent += 1
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise TemporaryError(f"no answer within {timeout_s:g} s", reason=Reason.REQUEST_TIMEOUT,
                                 delay=timeout_s) from None
        finally:
            self.pending.pop(job_id, None)

    def _flush(self) -> None:
        jobs, self._outbox = self._outbox, []
        try:
            self._requests.send(InferBatch(jobs))
        except ChannelClosed:
            gone = PackedError.of(model_process_gone())
            self.settle(Results([job.job_id for job in jobs], [gone] * len(jobs)))

    def settle(self, answers: Results) -> None:
        """Release answered jobs' arena blocks and resolve their futures (on the event loop); late ones drop."""
        for job_id, result in zip(answers.job_ids, answers.results, strict=True):
            block = self._held.pop(job_id, None)
            if block is not None:
                assert self._arena is not None
                self._arena.free(block)
                self._counts.blocks = len(self._held)
            future = self.pending.get(job_id)
            if future is None or future.done():
                continue
            if isinstance(result, InferenceResult):
                future.set_result(result)
            else:
                future.set_exception(result.unpack())

    def fail_all(self, error: ReleaseError) -> None:
        """Fail every waiting request (the model process is gone)."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)


class FrontRuntime:
    """A ``ServingRuntime`` for a front process: identity from ``ModelInfo``, inference in the model process."""

    def __init__(self, *, settings: PodSettings, info: ModelInfo, index: int, requests: Channel, replies: Channel,
                 counters: FrontCounters, arena: Arena | None, on_lost: Callable[[], None]):
        self.settings = settings
        self.info = info
        self.ready = False
        self.draining = False
        self._counts = counters.of(index)
        self._requests = requests
        self._replies = replies
        self._batcher = RemoteBatcher(requests=requests, counts=self._counts, arena=arena)
        self._index = index
        self._request_metrics = counters.requests
        self._scrapes: dict[int, asyncio.Future[bytes]] = {}
        self._scrape_ids = itertools.count()
        self._on_lost = on_lost
        self.worker = str(os.getpid())

    name = property(lambda self: self.info.name, doc="The name the model is served under.")
    version = property(lambda self: self.info.version, doc="The version the model is served as.")
    input_specs = property(lambda self: self.info.input_specs, doc="The declared inputs.")

    @property
    def batcher(self) -> RemoteBatcher:
        """Where inference requests go."""
        return self._batcher

    @property
    def in_flight(self) -> int:
        """Inference requests of this front not answered yet (shared with the model process's gauge)."""
        return self._counts.in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._counts.in_flight = value

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata, as the model process described it."""
        return self.info.metadata

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request in the pod-wide counters (shared memory, read by the model process)."""
        self._request_metrics.record(self._index, endpoint, code, seconds)

    async def scrape(self) -> bytes:
        """The whole pod's metrics, from the model process."""
        token = next(self._scrape_ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._scrapes[token] = future
        try:
            self._requests.send(ScrapeRequest(token))
            return await asyncio.wait_for(future, SCRAPE_TIMEOUT_S)
        except ChannelClosed:
            raise model_process_gone() from None
        finally:
            self._scrapes.pop(token, None)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading answers from the model process."""
        threading.Thread(target=self._read_replies, args=(loop,), name="pod-front-replies", daemon=True).start()

    def _settle_scrape(self, reply: ScrapeReply) -> None:
        future = self._scrapes.get(reply.token)
        if future is not None and not future.done():
            future.set_result(reply.text)

    def _lost(self) -> None:
        log.error("pod.model_process_lost", worker=self.worker)
        self.ready = False
        self._batcher.fail_all(model_process_gone())
        self._on_lost()

    def _read_replies(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                message = self._replies.recv()
            except ChannelClosed:
                loop.call_soon_threadsafe(self._lost)
                return
            if isinstance(message, Results):
                loop.call_soon_threadsafe(self._batcher.settle, message)
            elif isinstance(message, ScrapeReply):
                loop.call_soon_threadsafe(self._settle_scrape, message)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that other processes of this pod may bind too (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def run_front(settings: PodSettings, *, index: int, requests: Channel, replies: Channel, arena: Arena | None,
              counters: FrontCounters) -> None:
    """A front process's life: wait for the model, then serve HTTP on the shared port until SIGTERM drains it."""
    try:
        ready = replies.recv()
    except ChannelClosed:
        return  # the model did not load; the model process says why
    assert isinstance(ready, ModelReady)

    def stop_serving() -> None:
        # Called on the event loop, so only once ``server`` below runs.
        server.should_exit = True

    runtime = FrontRuntime(settings=settings, info=ready.info, index=index, requests=requests, replies=replies,
                           counters=counters, arena=arena, on_lost=stop_serving)
    api = PodApi(runtime)
    server = DrainingServer(uvicorn_config(api, settings), api=api, drain_timeout_s=settings.drain_timeout_s)
    gc.collect()
    gc.freeze()
    sock = listen(settings.host, settings.port)
    log.info("pod.front_starting", worker=runtime.worker, index=index)
    server.run(sockets=[sock])
    log.info("pod.front_stopped", worker=runtime.worker, index=index)
