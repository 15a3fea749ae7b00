"""What the control plane tells a serving backend about a registered version: one function, used by the
controller and by ``release deploy render`` so both pin the same thing.

The spec carries what was recorded at registration (the digest, and object generations where the bucket has
them), never anything read from the bucket now: pods verify their bytes against it before loading.
"""

from __future__ import annotations

from pathlib import Path

from release.ports import DeploymentSpec
from release.registry import VersionView
from schemas.policy import ReleasePolicy


def deployment_spec(view: VersionView, *, local_path: Path | None = None, gpu: bool | None = None) -> DeploymentSpec:
    """The spec that serves ``view`` as it was registered and as its policy says.

    ``gpu`` None follows the policy's ``serving`` section (an accelerator unless it says ``none`` or 0 GPUs);
    False serves on CPU whatever the policy says (``RELEASE_GPU=off``); True asks for a GPU even then.
    """
    policy = ReleasePolicy.model_validate(view.policy or {})
    serving = policy.serving
    return DeploymentSpec(model=view.model, version=view.version, artifact_uri=view.artifact_uri,
                          local_path=local_path, replicas=policy.min_replicas(),
                          gpu=serving.wants_gpu if gpu is None else gpu,
                          allow_model_code=policy.rollout.allow_model_code, digest=view.digest,
                          generations=dict(view.generations), max_batch_size=serving.max_batch_size,
                          max_batch_delay_ms=serving.max_batch_delay_ms, http_workers=serving.http_workers,
                          accelerator=serving.accelerator, gpus=serving.gpus, cpu=serving.cpu,
                          memory=serving.memory, max_replicas=serving.max_replicas,
                          target_queue_ms=serving.target_queue_ms, record_predictions=policy.drift.pod_records,
                          prediction_sample_rate=policy.drift.sample_rate)
