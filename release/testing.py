"""In-memory fakes of our own ports, for unit tests of the core (never of things we integrate with).

They keep the contracts of ``release.ports``; ``tests/release/test_port_contracts.py`` runs the same checks on
them and on the real adapters.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from release.ports import Candidate, DeploymentSpec, DeploymentStatus, ObjectInfo
from schemas.errors import NotFound, PermanentError, Reason, TemporaryError
from schemas.policy import ReleasePolicy, Strategy
from schemas.reports import CanaryStepResult, GateReport, GateResult, PromotionReport


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
class FakeServing:
    """``ServingBackend`` that "runs" pods as dict entries. ``broken`` versions never become ready."""

    broken: set[str] = field(default_factory=set)
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
        ready = version not in self.broken
        return DeploymentStatus(model=model, version=version, ready=ready,
                                endpoints=(f"http://fake/{model}/{version}",) if ready else (),
                                ready_replicas=1 if ready else 0, replicas=1)

    def wait_ready(self, spec: DeploymentSpec, *, timeout_s: float) -> DeploymentStatus:
        """Ready at once, or a rollout failure with a log excerpt for broken versions."""
        if spec.version in self.broken:
            raise PermanentError(f"{spec.model}/{spec.version} never became ready", reason=Reason.ROLLOUT_FAILED,
                                 details={"log_excerpt": "RuntimeError: cannot load model.pt"})
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
    """``Promoter`` whose canary outcome per version is set by the test (default: success)."""

    aborting: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    def shift(self, candidate: Candidate, *, stable: Candidate | None, policy: ReleasePolicy) -> PromotionReport:
        """Succeed unless the version is listed in ``aborting``."""
        self.calls.append(candidate.version)
        if candidate.version in self.aborting:
            step = CanaryStepResult(weight=10, requests=100.0, errors=50.0, error_rate=0.5, p99_ms=None, judged=True,
                                    ok=False, breaches=("error rate 0.500 > 0.01",))
            return PromotionReport(ok=False, strategy=Strategy.CANARY, steps=(step,), reason="error budget exceeded")
        step = CanaryStepResult(weight=100, requests=100.0, errors=0.0, error_rate=0.0, p99_ms=None, judged=True,
                                ok=True, breaches=())
        return PromotionReport(ok=True, strategy=Strategy.CANARY, steps=(step,))
