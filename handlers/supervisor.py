"""``--http-workers N`` (N > 1): fork N HTTP front processes, serve the model in this one, watch them all.

One Python event loop cannot parse HTTP and decode tensors fast enough to keep a GPU busy with one-input
requests, so the pod splits: this (parent) process owns the model, the dynamic batcher and the Prometheus
registry (``hub``); N forked fronts (``front``) each serve the pod's routes and hand decoded requests over a pipe
each way (``channel``, ``messages``). Batches still form across all fronts, because they form in the one batcher.

Everything shared is made before the fork: the pipes, each front's ``Arena`` and the ``FrontCounters``. SIGTERM
to the parent drains every front, then the batcher; the parent exits 0 after its children, or
``EXIT_FRONT_FAILED`` when a front exited unasked.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import structlog

from handlers.arena import Arena
from handlers.channel import Channel
from handlers.dataplane import ModelRuntime, load_runtime
from handlers.front import run_front
from handlers.front_counters import FrontCounters
from handlers.hub import FrontLink, ModelHub
from handlers.messages import ModelInfo
from handlers.settings import PodSettings
from schemas import pod_exit
from schemas.errors import ReleaseError

log = structlog.get_logger("handlers.supervisor")
EXIT_FRONT_FAILED = 1
LOAD_FAILED_WAIT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class FrontEnds:
    """A front's ends of its two pipes, and its arena."""

    requests: Channel  # write end
    replies: Channel   # read end
    arena: Arena | None


@dataclass(frozen=True, kw_only=True)
class Wiring:
    """Everything the processes share, made before the fork: pipes, arenas, counters."""

    links: list[FrontLink]        # the model process's ends
    front_ends: list[FrontEnds]  # the fronts' ends, in front order
    counters: FrontCounters

    @classmethod
    def create(cls, settings: PodSettings) -> Wiring:
        """Pipes both ways, an arena (unless ``--handoff-mb 0``) and a counter row for every front."""
        count = settings.http_workers
        links, front_ends = [], []
        for _ in range(count):
            (request_read, request_write), (reply_read, reply_write) = Channel.pipe(), Channel.pipe()
            arena = Arena(settings.handoff_mb << 20) if settings.handoff_mb else None
            links.append(FrontLink(requests=request_read, replies=reply_write, arena=arena))
            front_ends.append(FrontEnds(requests=request_write, replies=reply_read, arena=arena))
        return cls(links=links, front_ends=front_ends, counters=FrontCounters(count))


def _front_process(settings: PodSettings, index: int, wiring: Wiring) -> None:
    """A forked front: let go of what belongs to the model process and the other fronts, then serve."""
    own = wiring.front_ends[index]
    for link in wiring.links:
        link.requests.close()
        link.replies.close()
    for other, ends in enumerate(wiring.front_ends):
        if other != index:
            ends.requests.close()
            ends.replies.close()
            if ends.arena is not None:
                ends.arena.memory.close()
    run_front(settings, index=index, requests=own.requests, replies=own.replies, arena=own.arena,
              counters=wiring.counters)


class FrontSupervisor:
    """The parent's watch over its fronts: the first SIGTERM or SIGINT drains them all."""

    def __init__(self, fronts: Sequence[mp.process.BaseProcess]):
        self.fronts = fronts
        self.stopping = False

    def stop(self, sig: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Ask every live front to drain (once)."""
        if self.stopping:
            return
        self.stopping = True
        log.info("pod.draining", fronts=len(self.fronts))
        for front in self.fronts:
            if front.pid is not None and front.is_alive():
                os.kill(front.pid, signal.SIGTERM)

    def expect_exits(self) -> None:
        """The fronts are about to exit by themselves (the model did not load): that is no failure of theirs."""
        self.stopping = True

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


def _fork_fronts(settings: PodSettings, wiring: Wiring) -> Sequence[mp.process.BaseProcess]:
    """Start every front, then close their pipe ends here."""
    context = mp.get_context("fork")
    fronts = [context.Process(target=_front_process, name=f"pod-front-{index}", args=(settings, index, wiring))
              for index in range(settings.http_workers)]
    for front in fronts:
        front.start()
    for ends in wiring.front_ends:
        ends.requests.close()
        ends.replies.close()
    return fronts


def _log_starting(runtime: ModelRuntime, settings: PodSettings, fronts: Sequence[mp.process.BaseProcess]) -> None:
    log.info("pod.starting", model=runtime.name, version=runtime.version, handler=runtime.artifact.handler,
             device=str(runtime.device), dtype=settings.dtype, compile=settings.compile,
             max_batch_size=settings.max_batch_size, max_batch_delay_ms=settings.max_batch_delay_ms,
             queue_size=settings.queue_size, request_timeout_s=settings.request_timeout_s,
             host=settings.host, port=settings.port, http_workers=settings.http_workers, pid=os.getpid(),
             fronts=[front.pid for front in fronts])


def serve_workers(settings: PodSettings) -> int:
    """Fork the fronts, load the model here, serve until SIGTERM, drain. Returns the process exit code."""
    wiring = Wiring.create(settings)
    fronts = _fork_fronts(settings, wiring)
    supervisor = FrontSupervisor(fronts)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    try:
        runtime = load_runtime(settings, fronts=wiring.counters)
    except ReleaseError as e:
        log.error("pod.load_failed", artifact=str(settings.artifact), **e.to_dict())
        for link in wiring.links:
            link.replies.close()  # each front reads end of stream and exits
        supervisor.expect_exits()
        supervisor.wait(timeout_after_stop_s=LOAD_FAILED_WAIT_S)
        return pod_exit.exit_code_for(e.reason)
    gc.collect()
    gc.freeze()
    hub = ModelHub(runtime, links=wiring.links, counters=wiring.counters)
    runtime.ready = True
    hub.start(ModelInfo(name=runtime.name, version=runtime.version, input_specs=runtime.input_specs,
                        metadata=runtime.metadata()))
    _log_starting(runtime, settings, fronts)
    code = supervisor.wait(timeout_after_stop_s=settings.drain_timeout_s + 10.0)
    runtime.batcher.stop()
    hub.close()
    log.info("pod.stopped", model=runtime.name, version=runtime.version, exit_code=code)
    return code
