"""Release policy: which gates a version must pass, how it is rolled out and served, how drift is judged.

A model's policy belongs to the operator: it is set with ``release policy set`` (stored, versioned and audited by
``release.policies``), else the installation default (RELEASE_POLICY_JSON) applies; a bucket's
``policies/<name>.json`` counts only where RELEASE_BUCKET_POLICIES opts in. Every field has a default, so an
empty policy ``{}`` is a sensible one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricGate(_Frozen):
    """A threshold on a quality metric computed on the manifest's eval set through the staged pods."""

    metric: Annotated[str, Field(pattern=r"^(accuracy|macro_f1|top_\d+|auc|mae|rmse)$")]
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> MetricGate:
        if self.min is None and self.max is None:
            raise ValueError(f"gate on {self.metric} needs min or max")
        return self


class RegressionGate(_Frozen):
    """How far a metric may fall below the current PROD version on the same eval set, in the same run."""

    metric: str
    max_drop: Annotated[float, Field(ge=0)] = 0.0


class LatencyGate(_Frozen):
    """Latency and error budgets under a short closed-loop load against the staged pods."""

    requests: Annotated[int, Field(ge=1, le=100_000)] = 200
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = 1000.0
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0


class GatePolicy(_Frozen):
    """The gates a version must pass to be promoted."""

    metrics: list[MetricGate] = Field(default_factory=lambda: [MetricGate(metric="accuracy", min=0.5)])
    regression: list[RegressionGate] = Field(
        default_factory=lambda: [RegressionGate(metric="accuracy", max_drop=0.0)])
    latency: LatencyGate | None = Field(default_factory=LatencyGate)
    smoke: bool = True
    custom: list[str] = Field(default_factory=list)
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64


class Strategy(StrEnum):
    """How PROD moves to a version that passed its gates."""

    DIRECT = "direct"
    CANARY = "canary"


class CanaryStep(_Frozen):
    """Send ``weight`` percent of PROD traffic to the candidate for ``watch_s`` seconds, within budgets."""

    weight: Annotated[int, Field(ge=1, le=100)]
    watch_s: Annotated[float, Field(ge=0)] = 10.0


class RolloutPolicy(_Frozen):
    """How a version goes live and how the old one leaves."""

    strategy: Strategy = Strategy.DIRECT
    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=10), CanaryStep(weight=50), CanaryStep(weight=100)])
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_p99_ms: float | None = None
    min_requests: Annotated[int, Field(ge=0)] = 20
    grace_period_s: Annotated[float, Field(ge=0)] = 30.0
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    ready_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    # Versions stored before the rename carry ``allow_handler_code``; it means the same switch, now wider.
    allow_model_code: bool = Field(default=True,
                                   validation_alias=AliasChoices("allow_model_code", "allow_handler_code"))
    """Serve artifacts that carry code (handler files, ``.mar``, TorchScript). Off: only weights-only
    ``state_dict`` or ``safetensors`` in a built-in architecture. The pods' sandbox is the defence when on."""
    #: A ``.mar`` built with ``--requirements-file`` asks for pip installs at load time. Refused unless True; even
    #: then nothing is installed: intake records the file and pods serve with the packages they ship.
    allow_requirements: bool = False

    @model_validator(mode="after")
    def _ends_at_full(self) -> RolloutPolicy:
        weights = [s.weight for s in self.steps]
        if self.strategy is Strategy.CANARY:
            if not weights or weights[-1] != 100:
                raise ValueError("canary steps must end at weight 100")
            if weights != sorted(weights):
                raise ValueError("canary step weights must not decrease")
        return self


class DriftPolicy(_Frozen):
    """How drift windows are formed and when they raise alerts."""

    window_size: Annotated[int, Field(ge=10)] = 500
    window_seconds: Annotated[float, Field(gt=0)] = 300.0
    min_samples: Annotated[int, Field(ge=1)] = 100
    psi_warning: float = 0.1
    psi_critical: float = 0.25
    js_warning: float = 0.1
    js_critical: float = 0.2
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    consecutive_windows: Annotated[int, Field(ge=1)] = 2
    rollback_on_critical: bool = False
    sample_rate: Annotated[float, Field(ge=0, le=1)] = 1.0
    webhook_url: str | None = None
    pod_records: bool | None = None
    """Whether serving pods print prediction records themselves (for routing that bypasses the Python router);
    None: on Kubernetes, off for local pods. A request the router records is never recorded by the pod too."""


#: Kubernetes resource quantities, e.g. ``500m`` or ``2`` CPUs, ``8Gi`` of memory.
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


class ServingPolicy(_Frozen):
    """How a version's pods are shaped, on Kubernetes and locally: hardware, replicas, batching.

    ``accelerator`` is a GKE accelerator label value (``nvidia-l4``, ``nvidia-tesla-t4``...) or ``none`` to serve
    on CPU; local pods use a GPU when one is present unless it is ``none`` or ``gpus`` is 0.
    ``min_replicas`` unset means ``rollout.replicas`` (the older field); set, it wins over it.
    """

    accelerator: Annotated[str, Field(pattern=r"^(none|[a-z0-9][-a-z0-9]{0,62})$")] = "nvidia-l4"
    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    cpu: Annotated[str, Field(pattern=_QUANTITY)] = "2"
    memory: Annotated[str, Field(pattern=_QUANTITY)] = "8Gi"
    min_replicas: Annotated[int, Field(ge=1, le=64)] | None = None
    max_replicas: Annotated[int, Field(ge=1, le=256)] = 4
    target_queue_ms: Annotated[float, Field(gt=0, le=60_000)] = 50.0
    """The queue time per pod the autoscaler keeps near (``pod_queue_time_seconds``)."""
    http_workers: Annotated[int, Field(ge=1, le=64)] = 1
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 2.0

    @property
    def wants_gpu(self) -> bool:
        """True when the pods should run on an accelerator."""
        return self.accelerator != "none" and self.gpus > 0

    @model_validator(mode="after")
    def _replica_range(self) -> ServingPolicy:
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("serving.min_replicas must not exceed serving.max_replicas")
        return self


class ReleasePolicy(_Frozen):
    """The whole policy of one model."""

    gates: GatePolicy = Field(default_factory=GatePolicy)
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    serving: ServingPolicy = Field(default_factory=ServingPolicy)

    def min_replicas(self) -> int:
        """The replicas a version always runs: ``serving.min_replicas`` when set, else ``rollout.replicas``."""
        return self.serving.min_replicas or self.rollout.replicas
