"""``--http-workers N`` (N > 1): N HTTP front processes in front of one model process.

One Python event loop cannot parse HTTP and decode tensors fast enough to keep a GPU busy with one-input requests,
so the pod splits: the parent process owns the model, the dynamic batcher and the Prometheus registry; N forked
front processes each listen on the pod's port (``SO_REUSEPORT``: the kernel spreads connections over them), run
the same routes (``app.PodApi``) and hand decoded requests to the parent over a pipe each way (``channel``).
Batches still form across all fronts, because they form in the one batcher.

The model process is the one process every request passes through, so it is kept to the least work per request:
a front puts a request's tensors in its shared-memory ``Arena`` and sends only where they lie, requests decoded
in the same event-loop turn travel in one message, and one reader thread serves every front's pipe.

Shared counters (one ``int64`` array, four per front, each written by its front only) tell the batcher how many
requests are on their way (so a lone request still does not wait for the batch delay) and give the in-flight and
arena gauges. Fronts count answered requests in shared memory too (``request_metrics``), so ``/metrics`` on any
front shows the whole pod, exact when scraped. SIGTERM to the parent drains every front, then the batcher; the
parent exits 0 after its children.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import itertools
import multiprocessing as mp
import multiprocessing.connection
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog
from prometheus_client import generate_latest

from handlers.arena import Arena, Placement
from handlers.base import InferenceRequest, InferenceResult, Tensors
from handlers.batching import Reply
from handlers.channel import Channel, ChannelClosed
from handlers.dataplane import ModelRuntime, load_runtime
from handlers.request_metrics import SharedRequestMetrics
from handlers.settings import PodSettings
from schemas.errors import Reason, ReleaseError, TemporaryError
from schemas.manifest import TensorSpec

log = structlog.get_logger("handlers.workers")

SharedCounters = Any  # a multiprocessing RawArray of int64: (arriving, in_flight, sent, arena blocks) per front
_ARRIVING, _IN_FLIGHT, _SENT, _BLOCKS, _FIELDS = 0, 1, 2, 3, 4
SCRAPE_TIMEOUT_S = 10.0
EXIT_FRONT_FAILED = 1

# A ReleaseError crosses processes as (class from schemas.errors, message, attributes): handler code's own
# subclasses are not importable in a front, and some constructors take required keyword arguments.
PackedError = tuple[type[ReleaseError], str, dict[str, Any]]
Outcome = InferenceResult | PackedError


def pack_error(error: ReleaseError) -> PackedError:
    """The error as plain, importable parts."""
    cls = next(c for c in type(error).__mro__ if c.__module__ == ReleaseError.__module__)
    return cls, error.message, dict(vars(error))


def unpack_error(packed: PackedError) -> ReleaseError:
    """The error again, without calling its constructor."""
    cls, message, state = packed
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    vars(error).update(state)
    return error


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What a front must know about the model before it serves: sent once, when the model is loaded."""

    name: str
    version: str
    input_specs: list[TensorSpec] | None
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------------ front side
# A request as it crosses to the model process: the tensors either inline or placed in the front's arena.
PortableRequest = tuple[str, Tensors | None, bytes | None, Any, str, dict[str, str], dict[str, Any]]
Job = tuple[int, PortableRequest, Placement | None, float]  # job id, request, placement, timeout


def portable(request: InferenceRequest, *, inline: bool) -> PortableRequest:
    """The request's parts as plain values (tensors left out when they travel through the arena)."""
    return (request.id, request.inputs if inline else None, request.raw, request.json_body, request.content_type,
            dict(request.headers), dict(request.parameters))


def unportable(parts: PortableRequest, inputs: Tensors | None) -> InferenceRequest:
    """The request again, with ``inputs`` (arena views) when its tensors did not travel inline."""
    request_id, inline, raw, json_body, content_type, headers, parameters = parts
    return InferenceRequest(id=request_id, inputs=inputs if inputs is not None else inline or {}, raw=raw,
                            json_body=json_body, content_type=content_type, headers=headers, parameters=parameters)


class RemoteBatcher:
    """The batcher as a front sees it: requests go to the model process, answers come back by job id."""

    def __init__(self, *, requests: Channel, counters: SharedCounters, index: int, arena: Arena | None):
        self._requests = requests
        self._counters = counters
        self._base = index * _FIELDS
        self._arena = arena
        self._ids = itertools.count()
        self._outbox: list[Job] = []
        self._held: dict[int, int] = {}  # job id -> arena block, until the model process answers that job
        self.pending: dict[int, asyncio.Future[InferenceResult]] = {}

    @property
    def arriving(self) -> int:
        """Requests of this front being read or decoded (shared with the batcher)."""
        return int(self._counters[self._base + _ARRIVING])

    @arriving.setter
    def arriving(self, value: int) -> None:
        self._counters[self._base + _ARRIVING] = value

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
            self._held[job_id] = placement[0]
            self._counters[self._base + _BLOCKS] = len(self._held)
        self._outbox.append((job_id, portable(request, inline=placement is None), placement, timeout_s))
        if len(self._outbox) == 1:
            loop.call_soon(self._flush)
        self._counters[self._base + _SENT] += 1
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
            self._requests.send(("infer", jobs))
        except ChannelClosed:
            self.settle([(job[0], pack_error(_gone())) for job in jobs])

    def settle(self, outcomes: Sequence[tuple[int, Outcome]]) -> None:
        """Release answered jobs' arena blocks and resolve their futures (on the event loop); late ones drop."""
        for job_id, outcome in outcomes:
            block = self._held.pop(job_id, None)
            if block is not None:
                assert self._arena is not None
                self._arena.free(block)
                self._counters[self._base + _BLOCKS] = len(self._held)
            future = self.pending.get(job_id)
            if future is None or future.done():
                continue
            if isinstance(outcome, InferenceResult):
                future.set_result(outcome)
            else:
                future.set_exception(unpack_error(outcome))

    def fail_all(self, error: ReleaseError) -> None:
        """Fail every waiting request (the model process is gone)."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)


def _gone() -> TemporaryError:
    return TemporaryError("the model process is gone", reason=Reason.UNAVAILABLE, delay=1.0)


class FrontRuntime:
    """A ``ServingRuntime`` for a front process: identity from ``ModelInfo``, inference in the model process."""

    def __init__(self, *, settings: PodSettings, info: ModelInfo, index: int, requests: Channel, replies: Channel,
                 counters: SharedCounters, arena: Arena | None, request_metrics: SharedRequestMetrics):
        self.settings = settings
        self.info = info
        self.ready = False
        self.draining = False
        self._counters = counters
        self._base = index * _FIELDS
        self._requests = requests
        self._replies = replies
        self._batcher = RemoteBatcher(requests=requests, counters=counters, index=index, arena=arena)
        self._index = index
        self._request_metrics = request_metrics
        self._scrapes: dict[int, asyncio.Future[bytes]] = {}
        self._scrape_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_lost: Callable[[], None] = lambda: None
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
        return int(self._counters[self._base + _IN_FLIGHT])

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._counters[self._base + _IN_FLIGHT] = value

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
            self._requests.send(("scrape", token))
            return await asyncio.wait_for(future, SCRAPE_TIMEOUT_S)
        except ChannelClosed:
            raise _gone() from None
        finally:
            self._scrapes.pop(token, None)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading answers from the model process."""
        self._loop = loop
        threading.Thread(target=self._read_replies, name="pod-front-replies", daemon=True).start()

    def _settle_scrape(self, token: int, text: bytes) -> None:
        future = self._scrapes.get(token)
        if future is not None and not future.done():
            future.set_result(text)

    def _lost(self) -> None:
        log.error("pod.model_process_lost", worker=self.worker)
        self.ready = False
        self._batcher.fail_all(_gone())
        self.on_lost()

    def _read_replies(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            try:
                message = self._replies.recv()
            except ChannelClosed:
                loop.call_soon_threadsafe(self._lost)
                return
            if message[0] == "results":
                loop.call_soon_threadsafe(self._batcher.settle, message[1])
            elif message[0] == "scrape":
                loop.call_soon_threadsafe(self._settle_scrape, message[1], message[2])


# ------------------------------------------------------------------------------------------ model side
@dataclass(slots=True, eq=False)
class _Ticket:
    """A remote request's place in the batcher: who asked, and until when the answer is wanted."""

    front: int
    job_id: int
    deadline: float

    def done(self) -> bool:
        return time.perf_counter() > self.deadline


@dataclass(frozen=True, kw_only=True)
class FrontLink:
    """The model process's ends of one front's pipes, and the front's arena."""

    requests: Channel
    replies: Channel
    arena: Arena | None


class ModelHub:
    """The model process's side: reads requests from every front into the batcher, sends batch results back.

    One reader thread waits on every front's pipe: messages are small (tensors lie in the arenas), and one
    thread does not contend with the batch workers for the GIL the way one thread per front would.
    """

    def __init__(self, runtime: ModelRuntime, *, links: Sequence[FrontLink], counters: SharedCounters,
                 request_metrics: SharedRequestMetrics):
        self.runtime = runtime
        self._request_metrics = request_metrics
        self.links = links
        self._counters = counters
        self._received = [0] * len(links)

    def arriving_elsewhere(self) -> int:
        """Requests being decoded by a front, or sent and not yet read here."""
        counters = self._counters
        total = 0
        for front, received in enumerate(self._received):
            base = front * _FIELDS
            total += counters[base + _ARRIVING] + counters[base + _SENT] - received
        return total

    def in_flight(self) -> int:
        """Inference requests received by all fronts and not yet answered."""
        return sum(self._counters[front * _FIELDS + _IN_FLIGHT] for front in range(len(self.links)))

    def start(self, info: ModelInfo) -> None:
        """Start the batch workers and the reader thread, then tell every front the model is ready."""
        batcher = self.runtime.batcher
        batcher.arriving_elsewhere = self.arriving_elsewhere
        metrics = self.runtime.metrics
        # The fronts answer HTTP: request counts and latencies are theirs, summed from shared memory.
        metrics.registry.unregister(metrics.requests)
        metrics.registry.unregister(metrics.latency)
        metrics.registry.register(self._request_metrics)
        self.runtime.metrics.in_flight.set_function(self.in_flight)
        self.runtime.metrics.handoff_blocks.set_function(
            lambda: sum(self._counters[front * _FIELDS + _BLOCKS] for front in range(len(self.links))))
        batcher.start_detached(self.deliver)
        threading.Thread(target=self._read, name="pod-hub", daemon=True).start()
        for front in range(len(self.links)):
            self._send(front, ("hello", info))

    def _send(self, front: int, message: Any) -> None:
        try:
            self.links[front].replies.send(message)
        except ChannelClosed:
            log.warning("pod.front_gone", front=front)

    def deliver(self, replies: Sequence[Reply], results: Sequence[InferenceResult | ReleaseError]) -> None:
        """Send one batch's results, one message per front (called on the batch worker)."""
        by_front: dict[int, list[tuple[int, Outcome]]] = {}
        for reply, result in zip(replies, results, strict=True):
            assert isinstance(reply, _Ticket)
            outcome = pack_error(result) if isinstance(result, ReleaseError) else result
            by_front.setdefault(reply.front, []).append((reply.job_id, outcome))
        for front, outcomes in by_front.items():
            self._send(front, ("results", outcomes))

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

    def _handle(self, front: int, message: Any) -> None:
        kind = message[0]
        if kind == "infer":
            self._submit(front, message[1])
        elif kind == "scrape":
            self._send(front, ("scrape", message[1], generate_latest(self.runtime.metrics.registry)))

    def _submit(self, front: int, jobs: Sequence[Job]) -> None:
        arena = self.links[front].arena
        now = time.perf_counter()
        items = [(unportable(parts, arena.view(placement) if placement is not None and arena is not None else None),
                  _Ticket(front, job_id, now + timeout_s)) for job_id, parts, placement, timeout_s in jobs]
        self._received[front] += len(jobs)
        handoff = self.runtime.metrics.handoff
        handoff.labels("shared_memory").inc(sum(1 for job in jobs if job[2] is not None))
        handoff.labels("pipe").inc(sum(1 for job in jobs if job[2] is None and job[1][1]))
        batcher = self.runtime.batcher
        queued = batcher.submit_many(items)
        if queued < len(items):
            refused = pack_error(batcher.queue_full())
            self._send(front, ("results", [(job[0], refused) for job in jobs[queued:]]))

    def close(self) -> None:
        """Close the model process's pipe ends."""
        for link in self.links:
            link.requests.close()
            link.replies.close()


# ------------------------------------------------------------------------------------------ processes
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


@dataclass(frozen=True, kw_only=True)
class _FrontPipes:
    requests: Channel   # write end
    replies: Channel    # read end
    arena: Arena | None


def _run_front(settings: PodSettings, index: int, pipes: _FrontPipes, close_fds: Sequence[int],
               others: Sequence[Arena], counters: SharedCounters, request_metrics: SharedRequestMetrics) -> None:
    """A front process: wait for the model, then serve HTTP on the shared port until SIGTERM drains it."""
    from handlers.app import PodApi
    from handlers.server import DrainingServer, uvicorn_config

    for fd in close_fds:
        os.close(fd)
    for arena in others:
        arena.memory.close()
    try:
        message = pipes.replies.recv()
    except ChannelClosed:
        return  # the model did not load; the parent says why
    runtime = FrontRuntime(settings=settings, info=message[1], index=index, requests=pipes.requests,
                           replies=pipes.replies, counters=counters, arena=pipes.arena,
                           request_metrics=request_metrics)
    api = PodApi(runtime)
    server = DrainingServer(uvicorn_config(api, settings), api=api, drain_timeout_s=settings.drain_timeout_s)

    def lost() -> None:
        server.should_exit = True

    runtime.on_lost = lost
    gc.collect()
    gc.freeze()
    sock = listen(settings.host, settings.port)
    log.info("pod.front_starting", worker=runtime.worker, index=index)
    server.run(sockets=[sock])
    log.info("pod.front_stopped", worker=runtime.worker, index=index)


class _Supervisor:
    """The parent's signal handling: the first SIGTERM or SIGINT drains every front."""

    def __init__(self, fronts: Sequence[mp.process.BaseProcess]):
        self.fronts = fronts
        self.stopping = False

    def stop(self, sig: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("pod.draining", fronts=len(self.fronts))
        for front in self.fronts:
            if front.pid is not None and front.is_alive():
                os.kill(front.pid, signal.SIGTERM)

    def wait(self, *, timeout_after_stop_s: float) -> int:
        """Wait for every front; one exiting unasked stops the others, and the pod exits non-zero."""
        code = 0
        alive = list(self.fronts)
        stop_deadline: float | None = None
        while alive:
            multiprocessing.connection.wait([front.sentinel for front in alive], timeout=0.5)
            for front in [f for f in alive if not f.is_alive()]:
                alive.remove(front)
                front.join()
                if not self.stopping or front.exitcode != 0:
                    log.error("pod.front_exited", pid=front.pid, exitcode=front.exitcode)
                    code = EXIT_FRONT_FAILED
                    self.stop()
            if self.stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + timeout_after_stop_s
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                for front in alive:
                    log.error("pod.front_killed", pid=front.pid)
                    front.kill()
        return code


def serve_workers(settings: PodSettings, *, exit_load_failed: int) -> int:
    """Fork the fronts, load the model here, serve until SIGTERM, drain. Returns the process exit code."""
    count = settings.http_workers
    context = mp.get_context("fork")
    counters = context.RawArray(ctypes.c_int64, count * _FIELDS)
    request_metrics = SharedRequestMetrics(count)
    pairs = [(Channel.pipe(), Channel.pipe()) for _ in range(count)]
    arenas = [Arena(settings.handoff_mb << 20) if settings.handoff_mb else None for _ in range(count)]
    links = [FrontLink(requests=req_read, replies=rep_write, arena=arena)
             for ((req_read, _), (_, rep_write)), arena in zip(pairs, arenas, strict=True)]
    front_pipes = [_FrontPipes(requests=req_write, replies=rep_read, arena=arena)
                   for ((_, req_write), (rep_read, _)), arena in zip(pairs, arenas, strict=True)]
    every_fd = [channel.fd for pair in pairs for ends in pair for channel in ends]
    fronts = []
    for index, pipes in enumerate(front_pipes):
        own = {pipes.requests.fd, pipes.replies.fd}
        others = [arena for arena in arenas if arena is not None and arena is not pipes.arena]
        fronts.append(context.Process(
            target=_run_front, name=f"pod-front-{index}",
            args=(settings, index, pipes, [fd for fd in every_fd if fd not in own], others, counters,
                  request_metrics)))
    for front in fronts:
        front.start()
    for pipes in front_pipes:
        pipes.requests.close()
        pipes.replies.close()
    supervisor = _Supervisor(fronts)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    hub: ModelHub | None = None
    try:
        runtime = load_runtime(settings)
    except ReleaseError as e:
        log.error("pod.load_failed", artifact=str(settings.artifact), **e.to_dict())
        for link in links:
            link.replies.close()
        supervisor.stopping = True
        supervisor.wait(timeout_after_stop_s=10.0)
        return exit_load_failed
    gc.collect()
    gc.freeze()
    hub = ModelHub(runtime, links=links, counters=counters, request_metrics=request_metrics)
    info = ModelInfo(name=runtime.name, version=runtime.version, input_specs=runtime.input_specs,
                     metadata=runtime.metadata())
    runtime.ready = True
    hub.start(info)
    log.info("pod.starting", model=runtime.name, version=runtime.version, handler=runtime.artifact.handler,
             device=str(runtime.device), dtype=settings.dtype, compile=settings.compile,
             max_batch_size=settings.max_batch_size, max_batch_delay_ms=settings.max_batch_delay_ms,
             queue_size=settings.queue_size, request_timeout_s=settings.request_timeout_s,
             host=settings.host, port=settings.port, http_workers=count, pid=os.getpid(),
             fronts=[front.pid for front in fronts])
    code = supervisor.wait(timeout_after_stop_s=settings.drain_timeout_s + 10.0)
    runtime.batcher.stop()
    hub.close()
    log.info("pod.stopped", model=runtime.name, version=runtime.version, exit_code=code)
    return code
