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


def deployment_spec(view: VersionView, *, local_path: Path | None = None, gpu: bool = False) -> DeploymentSpec:
    """The spec that serves ``view`` as it was registered and as its policy says."""
    rollout = ReleasePolicy.model_validate(view.policy or {}).rollout
    return DeploymentSpec(model=view.model, version=view.version, artifact_uri=view.artifact_uri,
                          local_path=local_path, replicas=rollout.replicas, gpu=gpu,
                          allow_model_code=rollout.allow_model_code, digest=view.digest,
                          generations=dict(view.generations))
