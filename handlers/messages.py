"""The messages an HTTP front and the model process send each other over their pipes (``channel``).

Front to model process: ``InferBatch`` (requests decoded in one event-loop turn) and ``ScrapeRequest``. Model
process to front: ``ModelReady`` (once, when the model is loaded), ``Results`` (one batch's answers for that
front) and ``ScrapeReply``. Each is a NamedTuple: both ends read fields by name, and it pickles a few bytes
larger than a bare tuple. What a typed object does cost is a Python call per object on each side of the pipe,
so the per-request parts are kept few: one flat ``Job`` per request, answers as two lists. Tensors do not
travel in these messages when they fit the front's arena: a ``Job`` then carries only their ``Placement``.

A ``ReleaseError`` crosses as a ``PackedError``: handler code's own subclasses are not importable in a front,
and some constructors take required keyword arguments, so it travels as its ``schemas.errors`` class, message
and attributes, and is rebuilt without calling a constructor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from handlers.arena import Placement
from handlers.base import InferenceRequest, InferenceResult, Tensors
from schemas.errors import ReleaseError
from schemas.manifest import TensorSpec


class PackedError(NamedTuple):
    """A ``ReleaseError`` as plain, importable parts."""

    kind: type[ReleaseError]
    message: str
    state: dict[str, Any]

    @classmethod
    def of(cls, error: ReleaseError) -> PackedError:
        """The error as its nearest ``schemas.errors`` class, its message and its attributes."""
        kind = next(c for c in type(error).__mro__ if c.__module__ == ReleaseError.__module__)
        return cls(kind, error.message, dict(vars(error)))

    def unpack(self) -> ReleaseError:
        """The error again, without calling its constructor."""
        error = self.kind.__new__(self.kind)
        Exception.__init__(error, self.message)
        vars(error).update(self.state)
        return error


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What a front must know about the model before it serves."""

    name: str
    version: str
    input_specs: list[TensorSpec] | None
    metadata: dict[str, Any]


class Job(NamedTuple):
    """One request for the model process: the ``InferenceRequest``'s parts, and the front's job id to answer."""

    job_id: int
    request_id: str
    inputs: Tensors | None  # None: the tensors lie in the front's arena (``placement``), or there are none
    raw: bytes | None
    json_body: Any
    content_type: str
    headers: dict[str, str]
    parameters: dict[str, Any]
    placement: Placement | None
    timeout_s: float

    @classmethod
    def of(cls, job_id: int, request: InferenceRequest, *, placement: Placement | None, timeout_s: float) -> Job:
        """The request as plain values; its tensors travel inline unless they were placed in the arena."""
        return cls(job_id, request.id, request.inputs if placement is None else None, request.raw,
                   request.json_body, request.content_type, dict(request.headers), dict(request.parameters),
                   placement, timeout_s)

    def restore(self, arena_inputs: Tensors | None) -> InferenceRequest:
        """The request again, with ``arena_inputs`` (views of the arena) when its tensors did not travel inline."""
        inputs = arena_inputs if arena_inputs is not None else self.inputs or {}
        return InferenceRequest(id=self.request_id, inputs=inputs, raw=self.raw, json_body=self.json_body,
                                content_type=self.content_type, headers=self.headers, parameters=self.parameters)


# ------------------------------------------------------------------------------------------ front -> model
class InferBatch(NamedTuple):
    """Requests a front decoded in one event-loop turn."""

    jobs: list[Job]


class ScrapeRequest(NamedTuple):
    """A front asks for the pod's metrics; the reply carries the same ``token``."""

    token: int


# ------------------------------------------------------------------------------------------ model -> front
class ModelReady(NamedTuple):
    """The model is loaded: the front may serve."""

    info: ModelInfo


class Results(NamedTuple):
    """Answers for one front's jobs (from one batch, or refused at once): ``results[i]`` answers ``job_ids[i]``."""

    job_ids: list[int]
    results: list[InferenceResult | PackedError]


class ScrapeReply(NamedTuple):
    """The pod's metrics, in Prometheus text, for the ``ScrapeRequest`` with the same ``token``."""

    token: int
    text: bytes


FrontMessage = InferBatch | ScrapeRequest
HubMessage = ModelReady | Results | ScrapeReply
