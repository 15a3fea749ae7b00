"""In-memory fakes of our own ports, for unit tests of the core (never of things we integrate with).

They keep the contracts of ``release.ports``: ``tests/contracts/`` runs one test body on each fake and on each real
adapter of the same port.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import event as sa_event
from sqlmodel import Session

from release.ports import (
    Candidate,
    DeadLetter,
    DeploymentSpec,
    DeploymentStatus,
    Message,
    ObjectInfo,
    SubscriptionSpec,
)
from schemas.errors import NotFound, PermanentError, Reason, TemporaryError
from schemas.events import CloudEvent, Topic
from schemas.policy import CanaryStep, ReleasePolicy, RolloutPolicy
from schemas.reports import CanaryStepResult, GateReport, GateResult


class MemoryStore:
    """``ArtifactStore`` in a dict: name -> (bytes, generation)."""

    def __init__(self, *, bucket: str = "memory-bucket") -> None:
        self._bucket = bucket
        self._objects: dict[str, tuple[bytes, int]] = {}
        self._generation = 0

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    @property
    def uri(self) -> str:
        """A URI naming this fake."""
        return f"memory://{self._bucket}"

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in name order."""
        for name in sorted(self._objects):
            if name.startswith(prefix):
                yield self._info(name)

    def _info(self, name: str) -> ObjectInfo:
        data, generation = self._objects[name]
        return ObjectInfo(name=name, size=len(data), generation=generation,
                          md5_hash=hashlib.md5(data).hexdigest())  # noqa: S324  (fake metadata only)

    def stat(self, name: str) -> ObjectInfo | None:
        """Metadata or None."""
        return self._info(name) if name in self._objects else None

    def open(self, name: str, *, generation: int | None = None) -> BinaryIO:
        """A reader over the stored bytes."""
        if name not in self._objects:
            raise NotFound(f"{name} does not exist")
        data, current = self._objects[name]
        if generation is not None and generation != current:
            raise TemporaryError(f"{name} changed", reason=Reason.OBJECT_CHANGED)
        return io.BytesIO(data)

    def write(self, name: str, data: bytes, *, content_type: str = "application/json") -> ObjectInfo:
        """Store bytes under a new generation."""
        self._generation += 1
        self._objects[name] = (bytes(data), self._generation)
        return self._info(name)

    def download(self, name: str, dest: Path, *, generation: int | None = None) -> ObjectInfo:
        """Write the object to ``dest``."""
        with self.open(name, generation=generation) as handle:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(handle.read())
        return self._info(name)

    def read_json(self, name: str) -> Any:
        """Convenience for tests: an object parsed as JSON."""
        return json.loads(self._objects[name][0])


@dataclass
class _Delivery:
    event: CloudEvent
    attempt: int = 0
    available_at: float = 0.0
    handle: str | None = None
    error: str = ""
    dead_at: datetime | None = None


class MemoryBus:
    """``EventBus`` in dicts. Publishing rides on the caller's SQLAlchemy transaction: an event is fanned out to
    the topic's subscriptions when that session commits, and forgotten when it rolls back. ``clock`` is
    injectable so tests can expire leases and delays without sleeping."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._specs: dict[str, SubscriptionSpec] = {}
        self._queues: dict[str, list[_Delivery]] = {}
        self._dead: dict[str, list[_Delivery]] = {}
        self._handles = itertools.count(1)

    def publish(self, event: CloudEvent, *, topic: Topic, session: Session,
                not_before: datetime | None = None) -> None:
        """Deliver ``event`` to every subscription of ``topic`` once ``session`` commits (not before ``not_before``)."""
        delay = 0.0 if not_before is None else (not_before - datetime.now(UTC)).total_seconds()
        sa_event.listen(session, "after_commit", lambda _s: self._fan_out(event, topic, delay), once=True)

    def _fan_out(self, event: CloudEvent, topic: Topic, delay_s: float) -> None:
        with self._lock:
            available = self._clock() + max(0.0, delay_s)
            for name, spec in self._specs.items():
                if spec.topic == topic:
                    self._queues[name].append(_Delivery(event=event, available_at=available))

    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Create the subscription when missing."""
        with self._lock:
            self._specs.setdefault(spec.name, spec)
            self._queues.setdefault(spec.name, [])
            self._dead.setdefault(spec.name, [])

    def setup(self, topics: Iterable[Topic], subscriptions: Iterable[SubscriptionSpec]) -> None:
        """Topics are implicit: create the subscriptions."""
        for spec in subscriptions:
            self.ensure_subscription(spec)

    def pull(self, subscription: str, *, max_messages: int = 10, wait_s: float = 0.0) -> list[Message]:
        """Lease deliveries that are due: new ones, delayed ones whose delay passed, and expired leases."""
        now = self._clock()
        spec = self._specs[subscription]
        leased: list[Message] = []
        with self._lock:
            for delivery in self._queues[subscription]:
                if len(leased) == max_messages:
                    break
                if delivery.available_at <= now:
                    delivery.attempt += 1
                    delivery.handle = str(next(self._handles))
                    delivery.available_at = now + spec.ack_deadline_s
                    leased.append(Message(event=delivery.event, subscription=subscription,
                                          attempt=delivery.attempt, handle=delivery.handle))
        return leased

    def _take(self, message: Message) -> _Delivery | None:
        queue = self._queues[message.subscription]
        for delivery in queue:
            if delivery.handle == message.handle:
                queue.remove(delivery)
                return delivery
        return None

    def ack(self, message: Message) -> None:
        """Settle the delivery; a stale handle is ignored."""
        with self._lock:
            self._take(message)

    def nack(self, message: Message, *, error: str, delay_s: float = 0.0) -> None:
        """Redeliver after ``delay_s``, or dead-letter with ``error`` on the last attempt."""
        with self._lock:
            delivery = self._take(message)
            if delivery is None:
                return
            delivery.error, delivery.handle = error, None
            if delivery.attempt >= self._specs[message.subscription].max_attempts:
                delivery.dead_at = datetime.now(UTC)
                self._dead[message.subscription].append(delivery)
            else:
                delivery.available_at = self._clock() + delay_s
                self._queues[message.subscription].append(delivery)

    def backlog(self, subscription: str) -> int:
        """Deliveries not settled yet, leased or not."""
        with self._lock:
            return len(self._queues.get(subscription, []))

    def flush(self) -> int:
        """Nothing to relay: events are delivered at commit."""
        return 0

    def dead_letters(self, subscription: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered deliveries, newest first."""
        with self._lock:
            letters = [DeadLetter(subscription=name, event_id=d.event.id, event_type=d.event.type,
                                  attempts=d.attempt, error=d.error, at=d.dead_at)
                       for name, dead in self._dead.items() if subscription in (None, name) for d in dead]
        return sorted(letters, key=lambda d: d.at or datetime.min.replace(tzinfo=UTC), reverse=True)[:limit]

    def redrive(self, subscription: str) -> int:
        """Put the dead letters back in the queue with fresh attempts."""
        with self._lock:
            dead, self._dead[subscription] = self._dead[subscription], []
            self._queues[subscription] += [_Delivery(event=d.event) for d in dead]
            return len(dead)

    def close(self) -> None:
        """Nothing is held between calls."""


@dataclass
class FakeServing:
    """``ServingBackend`` that "runs" pods as dict entries.

    ``broken`` versions' pods exit at once (they cannot load); ``slow`` versions' pods stay not ready, without
    failing, until the test removes them from the set.
    """

    broken: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)
    checks: int = 0
    running: dict[tuple[str, str], DeploymentSpec] = field(default_factory=dict)
    deploys: int = 0
    retired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Backend name."""
        return "fake"

    def deploy(self, spec: DeploymentSpec) -> DeploymentStatus:
        """Record the spec as running."""
        self.deploys += 1
        self.running[(spec.model, spec.version)] = spec
        return self._status(spec.model, spec.version)

    def _status(self, model: str, version: str) -> DeploymentStatus:
        ready = version not in self.broken and version not in self.slow
        return DeploymentStatus(model=model, version=version, ready=ready,
                                endpoints=(f"http://fake/{model}/{version}",) if ready else (),
                                ready_replicas=1 if ready else 0, replicas=1)

    def wait_ready(self, spec: DeploymentSpec, *, timeout_s: float) -> DeploymentStatus:
        """Ready at once, or a rollout failure with a log excerpt for broken (and still slow) versions."""
        if spec.version in self.broken or spec.version in self.slow:
            raise PermanentError(f"{spec.model}/{spec.version} never became ready", reason=Reason.ROLLOUT_FAILED,
                                 details={"log_excerpt": "RuntimeError: cannot load model.pt"})
        return self._status(spec.model, spec.version)

    def check_ready(self, spec: DeploymentSpec, *, give_up: bool = False) -> DeploymentStatus:
        """One look: broken pods fail at once, slow ones are not ready yet (a failure once ``give_up``)."""
        self.checks += 1
        if spec.version in self.broken or (give_up and spec.version in self.slow):
            return self.wait_ready(spec, timeout_s=0)
        return self._status(spec.model, spec.version)

    def status(self, model: str, version: str) -> DeploymentStatus | None:
        """Status of running pods or None."""
        return self._status(model, version) if (model, version) in self.running else None

    def retire(self, model: str, version: str) -> None:
        """Forget the pods."""
        if self.running.pop((model, version), None) is not None:
            self.retired.append((model, version))

    def close(self) -> None:
        """Stop everything."""
        self.running.clear()


@dataclass
class ScriptedGates:
    """``GateRunner`` whose verdict per version is set by the test (default: pass)."""

    failing: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    def evaluate(self, candidate: Candidate, *, baseline: Candidate | None,
                 policy: ReleasePolicy) -> GateReport:
        """A report passing unless the version is listed in ``failing``."""
        self.calls.append(candidate.version)
        passed = candidate.version not in self.failing
        accuracy = 0.9 if passed else 0.1
        gate = GateResult(name="metric:accuracy", value=accuracy, threshold=0.5, passed=passed, bound="min")
        return GateReport(passed=passed, gates=(gate,), metrics={"accuracy": accuracy}, baseline_metrics=None,
                          baseline_version=baseline.version if baseline else None, latency=None,
                          version=candidate.version)


@dataclass
class ScriptedPromoter:
    """``Promoter`` whose canary verdict per version is set by the test (default: every step passes)."""

    aborting: set[str] = field(default_factory=set)
    calls: list[tuple[str, int]] = field(default_factory=list)

    def snapshot(self, candidate: Candidate) -> dict[str, Any]:
        """Counters are not scripted: every window is judged on the scripted verdict alone."""
        return {}

    def judge(self, candidate: Candidate, *, step: CanaryStep, snapshot: dict[str, Any],
              rollout: RolloutPolicy) -> CanaryStepResult:
        """A breach of the error budget for versions listed in ``aborting``, a clean window otherwise."""
        self.calls.append((candidate.version, step.weight))
        if candidate.version in self.aborting:
            return CanaryStepResult(weight=step.weight, requests=100.0, errors=50.0, error_rate=0.5, p99_ms=None,
                                    judged=True, ok=False, breaches=("error rate 0.500 > 0.01",))
        return CanaryStepResult(weight=step.weight, requests=100.0, errors=0.0, error_rate=0.0, p99_ms=None,
                                judged=True, ok=True, breaches=())
