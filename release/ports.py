"""The ports: small protocols the core talks to, one per thing we integrate with.

Adapters (``release/adapters``) implement them; ``release/testing.py`` has in-memory fakes that pass the same
contract tests. The core never imports an adapter, only these protocols.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sqlmodel import Session

from schemas.events import CloudEvent, Topic
from schemas.policy import CanaryStep, ReleasePolicy, RolloutPolicy
from schemas.reports import CanaryStepResult, GateReport


# --------------------------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class ObjectInfo:
    """What a bucket knows about one object."""

    name: str
    size: int
    generation: int
    md5_hash: str | None = None
    crc32c: str | None = None
    updated: str | None = None
    content_type: str | None = None


class ArtifactStore(Protocol):
    """A bucket of artifacts: a local folder or a Cloud Storage bucket."""

    @property
    def bucket(self) -> str:
        """The bucket's name as it appears in storage events."""
        ...

    @property
    def uri(self) -> str:
        """``file:///abs/path`` or ``gs://bucket[/prefix]``."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order."""
        ...

    def stat(self, name: str) -> ObjectInfo | None:
        """The object's metadata, or None when it does not exist."""
        ...

    def open(self, name: str, *, generation: int | None = None) -> BinaryIO:
        """A streamed read. With ``generation``, raise ``TemporaryError(OBJECT_CHANGED)`` if it was overwritten."""
        ...

    def write(self, name: str, data: bytes, *, content_type: str = "application/json") -> ObjectInfo:
        """Create or overwrite an object (rejection reports, policies written by tools)."""
        ...

    def download(self, name: str, dest: Path, *, generation: int | None = None) -> ObjectInfo:
        """Stream one object to a local file, verifying the checksum the bucket reports."""
        ...


# --------------------------------------------------------------------------------------------- bus
@dataclass(frozen=True)
class Message:
    """One delivery of an event to one subscription. ``handle`` is what ack/nack need."""

    event: CloudEvent
    subscription: str
    attempt: int
    handle: str


@dataclass(frozen=True)
class DeadLetter:
    """An event that failed every attempt on one subscription, with the last error its consumer raised."""

    subscription: str
    event_id: str
    event_type: str
    attempts: int
    error: str
    at: datetime | None = None


@dataclass(frozen=True)
class SubscriptionSpec:
    """A consumer group: at-least-once, redelivered after the deadline, dead-lettered after max_attempts."""

    name: str
    topic: Topic
    ack_deadline_s: float = 60.0
    max_attempts: int = 5


class EventBus(Protocol):
    """Topics and subscriptions with at-least-once delivery. Publishing is transactional (outbox)."""

    def publish(self, event: CloudEvent, *, topic: Topic, session: Session,
                not_before: datetime | None = None) -> None:
        """Record ``event`` in the caller's transaction: it is delivered if and only if that transaction commits.

        ``not_before`` delays the delivery until then where the transport can (the local bus, the memory bus);
        Pub/Sub cannot delay a publish and delivers at once, so a consumer of a due event checks the time itself.
        """
        ...

    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Create the subscription (and its dead-letter topic) when missing; idempotent."""
        ...

    def setup(self, topics: Iterable[Topic], subscriptions: Iterable[SubscriptionSpec]) -> None:
        """Create every topic (where topics exist apart from subscriptions) and subscription; idempotent."""
        ...

    def pull(self, subscription: str, *, max_messages: int = 10, wait_s: float = 0.0) -> list[Message]:
        """Lease up to ``max_messages`` deliveries; wait up to ``wait_s`` for the first one."""
        ...

    def ack(self, message: Message) -> None:
        """The delivery is done; it will not come again."""
        ...

    def nack(self, message: Message, *, error: str, delay_s: float = 0.0) -> None:
        """Redeliver after ``delay_s``, or dead-letter with ``error`` kept once attempts run out."""
        ...

    def backlog(self, subscription: str) -> int:
        """Deliveries not yet acked (pending or leased): zero means this consumer is idle."""
        ...

    def flush(self) -> int:
        """Hand journalled events to the transport (a no-op for the local bus). Returns how many were sent."""
        ...

    def dead_letters(self, subscription: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        """Events that failed every attempt (on ``subscription``, or on any), newest first; nothing is consumed."""
        ...

    def redrive(self, subscription: str) -> int:
        """Deliver a subscription's dead letters again, with fresh attempts. Returns how many went back."""
        ...

    def close(self) -> None:
        """Release what the bus holds (streams, clients); what this process leased comes back at once."""
        ...


# --------------------------------------------------------------------------------------------- serving
@dataclass(frozen=True)
class DeploymentSpec:
    """What to run for one version: where its artifact is and how to serve it.

    ``digest`` is the one recorded at registration: pods refuse any other bytes (``checksum_mismatch``).
    ``generations`` maps each file of the artifact to the object generation registered, where the bucket has
    generations (Cloud Storage), so pods copy those objects and never what replaced them.
    The shape of the pods (hardware, replicas, batching) comes from the policy's ``serving`` section.
    """

    model: str
    version: str
    artifact_uri: str
    local_path: Path | None = None
    replicas: int = 1
    """The replicas the version always runs (the HPA's minimum on Kubernetes)."""
    gpu: bool = False
    """Whether pods ask for an accelerator: ``gpus`` of ``accelerator`` on Kubernetes, CUDA when present locally."""
    allow_model_code: bool = True
    digest: str = ""
    generations: dict[str, int] = field(default_factory=dict)
    max_batch_size: int = 32
    max_batch_delay_ms: float = 2.0
    http_workers: int = 1
    accelerator: str = "nvidia-l4"
    gpus: int = 1
    cpu: str = "2"
    memory: str = "8Gi"
    max_replicas: int = 4
    target_queue_ms: float = 50.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentStatus:
    """What a backend sees of one version's pods."""

    model: str
    version: str
    ready: bool
    endpoints: tuple[str, ...] = ()
    ready_replicas: int = 0
    replicas: int = 0
    message: str = ""
    log_excerpt: str = ""


class ServingBackend(Protocol):
    """Runs a version's serving pods: local processes or Kubernetes Deployments."""

    @property
    def name(self) -> str:
        """``local`` or ``kubernetes``: stored with each deployment."""
        ...

    def deploy(self, spec: DeploymentSpec) -> DeploymentStatus:
        """Start (or keep) the version's pods. Idempotent; returns at once without waiting for readiness."""
        ...

    def wait_ready(self, spec: DeploymentSpec, *, timeout_s: float) -> DeploymentStatus:
        """Block until every replica is ready; ``PermanentError(ROLLOUT_FAILED)`` with a log excerpt if never."""
        ...

    def check_ready(self, spec: DeploymentSpec, *, give_up: bool = False) -> DeploymentStatus:
        """Look once, without waiting: the pods' status, ready or not yet.

        Raise ``PermanentError`` (``rollout_failed``, or ``checksum_mismatch`` for pods that refused the bytes)
        with ``details.log_excerpt`` when they cannot become ready: a pod exited for good, or ``give_up`` (the
        caller's timeout passed) and they are still not ready.
        """
        ...

    def status(self, model: str, version: str) -> DeploymentStatus | None:
        """The pods' status, or None when nothing runs for that version."""
        ...

    def retire(self, model: str, version: str) -> None:
        """Stop and remove the version's pods. Idempotent."""
        ...

    def close(self) -> None:
        """Release what this backend holds (local pods stop; cluster objects stay)."""
        ...


# --------------------------------------------------------------------------------------------- gates, promotion
@dataclass(frozen=True)
class Candidate:
    """A version under evaluation or promotion, with the endpoints that serve it."""

    model: str
    version: str
    version_id: int
    manifest: dict[str, Any]
    endpoints: tuple[str, ...]
    local_path: Path | None = None


class GateRunner(Protocol):
    """Evaluates a staged version against its policy's gates, through real requests."""

    def evaluate(self, candidate: Candidate, *, baseline: Candidate | None,
                 policy: ReleasePolicy) -> GateReport:
        """The gate report: every gate's verdict and the measurements behind it. Raises TemporaryError to retry."""
        ...


class Promoter(Protocol):
    """Watches a canary's pods: what they served between a step's start and its judgement.

    The controller sets the route weights and keeps each step's progress; the promoter only measures, so each
    step is two short calls with the watch window in between spent waiting for a due event, not in a call.
    """

    def snapshot(self, candidate: Candidate) -> dict[str, Any]:
        """The candidate pods' cumulative counters now, as JSON stored with the step's start."""
        ...

    def judge(self, candidate: Candidate, *, step: CanaryStep, snapshot: dict[str, Any],
              rollout: RolloutPolicy) -> CanaryStepResult:
        """Read the counters again and judge what the pods served since ``snapshot`` against the budgets."""
        ...
