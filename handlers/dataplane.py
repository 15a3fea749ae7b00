"""The data plane: one loaded model behind a batcher, with readiness and draining. No HTTP here.

``load_runtime`` verifies the artifact, builds its handler (built-in or shipped code), warms it up and only then
lets the pod report ready. ``run_batch`` is what the batch worker calls: a failing batch is re-run request by
request so one bad request fails alone, and every error comes back as a ``ReleaseError`` for its request.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import torch
from prometheus_client import generate_latest
from prometheus_client.registry import Collector

from handlers.artifact import VerifiedArtifact, open_artifact
from handlers.base import Handler, HandlerContext, InferenceRequest, InferenceResult
from handlers.batching import Batcher
from handlers.builtin import BUILTIN_HANDLERS
from handlers.metrics import PodMetrics, create_metrics
from handlers.runner import pick_device
from handlers.settings import PodSettings
from handlers.user_code import load_user_handler
from schemas.errors import ArtifactRejected, PermanentError, Reason, ReleaseError
from schemas.manifest import TensorSpec

log = structlog.get_logger("handlers.dataplane")


class FrontTraffic(Protocol):
    """What HTTP front processes tell the model process when they answer HTTP for it (``--http-workers N``)."""

    @property
    def requests(self) -> Collector:
        """The fronts' answered-request counts and latencies."""

    def arriving(self) -> int:
        """Requests on their way from the fronts, not yet read here."""

    def in_flight(self) -> int:
        """Inference requests the fronts received and have not answered yet."""

    def handoff_blocks(self) -> int:
        """Arena blocks the fronts hold for requests not answered yet."""


def _no_fronts() -> int:
    return 0


def _as_error(exc: Exception) -> ReleaseError:
    if isinstance(exc, ReleaseError):
        return exc
    return PermanentError(f"the handler failed: {type(exc).__name__}: {exc}", reason=Reason.HANDLER_ERROR)


@dataclass(kw_only=True)
class ModelRuntime:
    """A served model: its identity, handler, batcher and lifecycle flags."""

    artifact: VerifiedArtifact
    handler: Handler
    device: torch.device
    settings: PodSettings
    metrics: PodMetrics
    batcher: Batcher = field(init=False)
    fronts: FrontTraffic | None = None  # None: HTTP is answered in this process
    ready: bool = False
    draining: bool = False
    in_flight: int = 0
    # (endpoint, code) -> its request counter and latency histogram: ``labels()`` takes a lock and builds a key
    # on every call, and every answered request needs both.
    _children: dict[tuple[str, int], tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        fronts = self.fronts
        self.batcher = Batcher(self.run_batch, max_batch_size=self.settings.max_batch_size,
                               max_batch_delay_s=self.settings.max_batch_delay_ms / 1000.0,
                               queue_size=self.settings.queue_size, metrics=self.metrics,
                               workers=self.settings.batch_workers,
                               arriving_elsewhere=fronts.arriving if fronts is not None else _no_fronts,
                               inline=fronts is None and not self.artifact.has_handler_code)
        if fronts is None:
            self.metrics.in_flight.set_function(lambda: self.in_flight)
        else:
            self.metrics.in_flight.set_function(fronts.in_flight)
            self.metrics.handoff_blocks.set_function(fronts.handoff_blocks)

    @property
    def name(self) -> str:
        """The name the model is served under."""
        return self.artifact.name

    @property
    def version(self) -> str:
        """The version the model is served as."""
        return self.artifact.version

    @property
    def input_specs(self) -> list[TensorSpec] | None:
        """The declared inputs, or None for a ``.mar`` (its handler decides)."""
        return list(self.artifact.manifest.inputs) if self.artifact.manifest is not None else None

    @property
    def worker(self) -> str | None:
        """No ``X-Pod-Worker`` header: this process is the whole pod."""
        return None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the batch worker; results come back on ``loop``."""
        self.batcher.start(loop)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        children = self._children.get((endpoint, code))
        if children is None:
            children = self._children[(endpoint, code)] = (self.metrics.requests.labels(endpoint, str(code)),
                                                            self.metrics.latency.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    async def scrape(self) -> bytes:
        """The Prometheus text exposition of this pod's registry."""
        return generate_latest(self.metrics.registry)

    def run_batch(self, batch: Sequence[InferenceRequest]) -> list[InferenceResult | ReleaseError]:
        """Run a batch; on failure, run its requests one by one so only the bad ones fail."""
        try:
            return list(self.handler.handle(batch))
        except Exception as exc:
            if len(batch) == 1:
                error = _as_error(exc)
                if error.reason is Reason.HANDLER_ERROR:
                    log.exception("handler.failed", request_id=batch[0].id, model=self.name)
                return [error]
        return [result for request in batch for result in self.run_batch([request])]

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata."""
        manifest = self.artifact.manifest
        platform = f"pytorch_{manifest.format}" if manifest is not None else "pytorch_mar"
        body: dict[str, Any] = {"name": self.name, "versions": [self.version], "platform": platform,
                                "inputs": [], "outputs": []}
        if manifest is not None:
            body["inputs"] = [spec.model_dump(mode="json") for spec in manifest.inputs]
            body["outputs"] = [spec.model_dump(mode="json") for spec in manifest.outputs]
            body["handler"] = manifest.handler
        elif self.artifact.mar is not None:
            body["handler"] = self.artifact.mar["handler"]
        return body


def _build_handler(artifact: VerifiedArtifact) -> Handler:
    if artifact.has_handler_code:
        return load_user_handler(artifact)
    handler_class = BUILTIN_HANDLERS.get(artifact.handler)
    if handler_class is None:
        raise ArtifactRejected(f"unknown handler {artifact.handler!r}; built-in ones are "
                               f"{sorted(BUILTIN_HANDLERS)}", reason=Reason.UNKNOWN_HANDLER)
    return handler_class()


def load_runtime(settings: PodSettings, *, fronts: FrontTraffic | None = None) -> ModelRuntime:
    """Verify and load the artifact, initialise and warm its handler. Raises ``ReleaseError`` when it cannot.

    ``fronts``: the HTTP front processes that answer HTTP for this one, if any (their counts feed the metrics).
    """
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    device = pick_device(settings.device)
    work_dir = settings.work_dir or Path(tempfile.mkdtemp(prefix="pod-"))
    artifact = open_artifact(settings.artifact.resolve(), work_dir=work_dir, allow_model_code=settings.allow_model_code,
                             expect_sha256=settings.expect_sha256, expect_digest=settings.expect_digest)
    if settings.batch_workers > 1 and artifact.has_handler_code:
        raise PermanentError(f"--batch-workers {settings.batch_workers} runs batches on several threads at once, "
                             "and this artifact's own handler code is not known to be thread-safe; serve it with "
                             "--batch-workers 1", reason=Reason.MODEL_LOAD_FAILED)
    handler = _build_handler(artifact)
    context = HandlerContext(name=artifact.name, version=artifact.version, model_dir=artifact.model_dir,
                             manifest=artifact.manifest, mar=artifact.mar, device=device,
                             dtype=settings.torch_dtype, max_batch_size=settings.max_batch_size,
                             channels_last=settings.channels_last, compile_mode=settings.compile,
                             batch_workers=settings.batch_workers)
    try:
        handler.initialize(context)
        handler.warmup()
    except ReleaseError:
        raise
    except Exception as e:
        raise PermanentError(f"model {artifact.name}:{artifact.version} failed to load: "
                             f"{type(e).__name__}: {e}", reason=Reason.MODEL_LOAD_FAILED) from e
    metrics = create_metrics(model=artifact.name, version=artifact.version, device=device,
                             request_counts=fronts.requests if fronts is not None else None)
    return ModelRuntime(artifact=artifact, handler=handler, device=device, settings=settings, metrics=metrics,
                        fronts=fronts)
