"""``python -m handlers.server``: load one artifact and serve it until SIGTERM, then drain and exit 0.

Exit codes: 0 after a clean drain, 2 for a bad command line, 3 when the artifact is refused or fails to load
(the log's last line says why, with its reason code), 4 when its bytes are not the registered ones
(``checksum_mismatch``), 1 when an HTTP worker process died unasked (``schemas.pod_exit``).

``--http-workers 1`` (the default) is one process; more puts HTTP front processes (``handlers.front``) before
one model process (``handlers.hub``), forked and watched by ``handlers.supervisor``.

``--warm`` starts a spare pod for the local backend's warm pool: it imports torch and the handlers first, then
reads its real command line as one JSON line on stdin and runs it exactly like a pod started with it (so the
artifact, the pinned digest and every setting still come from the command line the control plane made). End of
stdin before that line means the control plane let the spare go: it exits 0.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Sequence
from typing import IO

import structlog

from handlers.app import PodApi
from handlers.dataplane import load_runtime
from handlers.draining_server import DrainingServer, uvicorn_config
from handlers.logs import configure_logging
from handlers.settings import PodSettings, parse_settings
from handlers.supervisor import serve_workers
from schemas import pod_exit
from schemas.errors import ReleaseError

log = structlog.get_logger("handlers.server")
EXIT_LOAD_FAILED = pod_exit.LOAD_FAILED


def serve(settings: PodSettings) -> int:
    """Load, serve, drain in this one process. Returns the process exit code."""
    try:
        runtime = load_runtime(settings)
    except ReleaseError as e:
        log.error("pod.load_failed", artifact=str(settings.artifact), **e.to_dict())
        return pod_exit.exit_code_for(e.reason)
    # Everything loaded so far (torch, the model) lives until exit: keep the collector from rescanning it,
    # which would otherwise stall requests for tens of milliseconds at every full collection.
    gc.collect()
    gc.freeze()
    api = PodApi(runtime)
    server = DrainingServer(uvicorn_config(api, settings), api=api, drain_timeout_s=settings.drain_timeout_s)
    log.info("pod.starting", model=runtime.name, version=runtime.version, handler=runtime.artifact.handler,
             device=str(runtime.device), dtype=settings.dtype, compile=settings.compile,
             max_batch_size=settings.max_batch_size, max_batch_delay_ms=settings.max_batch_delay_ms,
             queue_size=settings.queue_size, request_timeout_s=settings.request_timeout_s,
             host=settings.host, port=settings.port, pid=os.getpid())
    server.run()
    runtime.batcher.stop()
    log.info("pod.stopped", model=runtime.name, version=runtime.version)
    return 0


WARM = "--warm"


def _warm_up() -> None:
    """Pay first-use costs before a version is named: uvicorn's lazy imports, torch's allocator and thread pool and,
    above all, the TorchScript executor's first runs (about 0.2 s for the first forward of any scripted model)."""
    import torch
    import uvicorn

    async def nothing(scope: object, receive: object, send: object) -> None:
        """An ASGI app, so uvicorn imports its loop, HTTP and websocket implementations now."""

    uvicorn.Config(nothing, log_config=None, lifespan="on").load()
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Softmax(-1)))
    with torch.inference_mode():
        for _ in range(3):
            scripted(torch.ones(2, 8))


def await_command(stream: IO[str]) -> list[str] | None:
    """The pod's command line, sent as one JSON list of strings; None when the control plane closed the pipe."""
    line = stream.readline()
    if not line.strip():
        return None
    argv = json.loads(line)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or WARM in argv:
        raise SystemExit(f"a warm pod's command must be a JSON list of arguments without {WARM}: {line[:200]!r}")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m handlers.server``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == [WARM]:
        _warm_up()
        command = await_command(sys.stdin)
        # Nothing more comes from the control plane: stdin becomes /dev/null, as for a pod started cold.
        sys.stdin.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if command is None:
            return 0
        argv = command
    settings = parse_settings(argv, environ=os.environ)
    # The event loop and the batch worker pass the GIL back and forth on every batch; Python's default 5 ms
    # switch interval would let either one stall the other for that long under load.
    sys.setswitchinterval(0.0005)
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    if settings.http_workers > 1:
        return serve_workers(settings)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
