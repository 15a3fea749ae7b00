"""Handler code that came with an artifact: import it, and adapt TorchServe entry points to our contract.

Only the pod process calls this (``handlers.server`` after the artifact was verified and handler code allowed).
A handler file may define a subclass of ``handlers.base.Handler``; otherwise it is read the way TorchServe reads
it: a module-level ``handle(data, context)`` (or the function named after ``:``), else the single class of the
module, usually derived from ``ts.torch_handler.base_handler.BaseHandler``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from handlers.archive import MAR_MANIFEST
from handlers.artifact import VerifiedArtifact
from handlers.base import Handler, HandlerContext, InferenceRequest, InferenceResult
from handlers.tensors import bad_request
from schemas.errors import ArtifactRejected, PermanentError, Reason

COMPAT_DIR = Path(__file__).parent / "compat"
TorchServeEntry = Callable[[Any, Any], Any]


def enable_torchserve_compat() -> None:
    """Make ``import ts`` resolve to our compatibility package, in this process only."""
    if str(COMPAT_DIR) not in sys.path:
        sys.path.insert(0, str(COMPAT_DIR))


def _import_file(path: Path) -> ModuleType:
    """Import ``path`` under its file name, with its folder on ``sys.path`` so its sibling modules import too."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ArtifactRejected(f"handler file {path.name} cannot be imported", reason=Reason.UNKNOWN_HANDLER,
                               file=path.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _torchserve_manifest(artifact: VerifiedArtifact) -> dict[str, Any]:
    """TorchServe's ``context.manifest``: the archive's own, or one made from ``manifest.json``."""
    path = artifact.model_dir / MAR_MANIFEST
    if artifact.mar is not None and path.is_file():
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return document
    return {"runtime": "python", "model": {"modelName": artifact.name, "modelVersion": artifact.version,
                                           "handler": artifact.handler}}


class TorchServeHandler(Handler):
    """Runs a TorchServe entry point as one batch step; per-request status and content type come back out."""

    def __init__(self, entry: TorchServeEntry, *, artifact: VerifiedArtifact, call_on_load: bool):
        self.entry = entry
        self.artifact = artifact
        self.call_on_load = call_on_load
        self.ts_context: Any = None

    def initialize(self, context: HandlerContext) -> None:
        """Build TorchServe's ``Context``; module-level ``handle`` functions get TorchServe's ``handle(None, ctx)``."""
        super().initialize(context)
        from ts.context import Context  # resolvable only once the compat folder is on sys.path

        self.ts_context = Context(
            self.artifact.name, str(context.model_dir), _torchserve_manifest(self.artifact),
            context.max_batch_size, 0 if context.device.type == "cuda" else None, "0.12.0")
        if self.call_on_load:
            self.entry(None, self.ts_context)

    def preprocess(self, batch: Sequence[InferenceRequest]) -> list[dict[str, Any]]:
        """TorchServe's request rows: ``{"body": ..., "data": ...}`` with parsed JSON or raw bytes."""
        self.ts_context.start_batch([r.id for r in batch], [r.headers for r in batch])
        return [{"body": payload, "data": payload} for payload in map(_payload, batch)]

    def inference(self, batch: list[dict[str, Any]]) -> list[Any]:
        """Call the entry point once for the whole batch."""
        from ts.utils.util import PredictionException

        try:
            answers = self.entry(batch, self.ts_context)
        except PredictionException as e:
            if 400 <= e.error_code < 500:
                raise bad_request("handler_rejected", e.message, status=e.error_code) from e
            raise PermanentError(e.message, reason=Reason.HANDLER_ERROR) from e
        if not isinstance(answers, list) or len(answers) != len(batch):
            raise PermanentError(f"the handler returned {type(answers).__name__} instead of a list of "
                                 f"{len(batch)} answers", reason=Reason.HANDLER_ERROR)
        return answers

    def postprocess(self, batch: list[Any]) -> list[InferenceResult]:
        """One result per answer, with the status and content type the handler set for it."""
        results = []
        for index, answer in enumerate(batch):
            status, _ = self.ts_context.get_response_status(index)
            results.append(InferenceResult(payload=answer, status=None if status == 200 else status,
                                           content_type=self.ts_context.get_response_content_type(index)))
        return results


def _payload(request: InferenceRequest) -> Any:
    if request.json_body is not None:
        return request.json_body
    if request.raw is not None:
        return bytearray(request.raw)
    arrays = {name: np.asarray(array).tolist() for name, array in request.inputs.items()}
    return next(iter(arrays.values())) if len(arrays) == 1 else arrays


def _own_classes(module: ModuleType) -> list[type]:
    return [member for _, member in inspect.getmembers(module, inspect.isclass)
            if member.__module__ == module.__name__]


def load_user_handler(artifact: VerifiedArtifact) -> Handler:
    """Import the artifact's handler file and return an (uninitialised) handler for it."""
    enable_torchserve_compat()
    spec = artifact.handler
    file_name, _, function_name = spec.partition(":")
    module = _import_file(artifact.model_dir / file_name)
    native = [cls for cls in _own_classes(module) if issubclass(cls, Handler) and not inspect.isabstract(cls)]
    if len(native) == 1:
        return native[0]()
    function = getattr(module, function_name or "handle", None)
    if callable(function) and not inspect.isclass(function):
        return TorchServeHandler(function, artifact=artifact, call_on_load=True)
    classes = _own_classes(module)
    if len(classes) != 1 or not callable(getattr(classes[0], "handle", None)):
        raise ArtifactRejected(f"handler {spec} defines neither a handle function nor exactly one handler class",
                               reason=Reason.UNKNOWN_HANDLER, file=file_name)
    service = classes[0]()
    return _ClassEntryHandler(service, artifact=artifact)


class _ClassEntryHandler(TorchServeHandler):
    """A TorchServe handler class: ``initialize(ctx)`` once, then ``handle(data, ctx)`` per batch."""

    def __init__(self, service: Any, *, artifact: VerifiedArtifact):
        super().__init__(service.handle, artifact=artifact, call_on_load=False)
        self.service = service

    def initialize(self, context: HandlerContext) -> None:
        """Build the TorchServe context, then let the class load its model."""
        super().initialize(context)
        self.service.initialize(self.ts_context)
