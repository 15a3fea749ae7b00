"""Which release policy an uploaded artifact falls under, and what that policy refuses at intake.

The operator's policy (registry) wins; a bucket's ``policies/<model>.json`` stands in only where opted in
(RELEASE_BUCKET_POLICIES); else the installation default. Refusals: model code where the policy forbids it, and
a ``.mar``'s pip requirements unless ``rollout.allow_requirements`` (which records them; nothing installs them).
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from release import policies
from release.db import session_scope
from release.ports import ArtifactStore
from schemas.errors import ArtifactRejected, Reason
from schemas.manifest import MAX_MANIFEST_BYTES, Manifest, ModelFormat
from schemas.policy import ReleasePolicy


def policy_for(model: str, *, engine: Engine, store: ArtifactStore, default: ReleasePolicy,
               bucket_policies: bool) -> ReleasePolicy:
    """The operator's policy from the registry; else, only where opted in, the bucket's; else the default."""
    with session_scope(engine) as session:
        operator = policies.current(session, model)
    if operator is not None:
        return operator.policy
    if not bucket_policies:
        return default
    name = f"policies/{model}.json"
    info = store.stat(name)
    if info is None:
        return default
    with store.open(name) as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    try:
        return ReleasePolicy.model_validate_json(raw)
    except ValidationError as exc:
        raise ArtifactRejected(f"{name} is not a valid release policy: {exc.errors()[0]['msg']}",
                               reason=Reason.POLICY_INVALID, file=name,
                               hint=f"Fix {name}; artifacts of {model} are held until it is valid.") from exc


def check_policy(manifest: Manifest, policy: ReleasePolicy) -> None:
    """Refuse what the model's policy forbids: model code, and a ``.mar``'s pip requirements."""
    if manifest.has_model_code and not policy.rollout.allow_model_code:
        raise ArtifactRejected(
            f"{manifest.name}'s policy forbids model code inside artifacts; this artifact is {manifest.format} "
            f"with handler {manifest.handler!r}", reason=Reason.MODEL_CODE_FORBIDDEN, file=manifest.handler,
            hint="Ship state_dict or safetensors weights for a built-in architecture with a built-in handler "
                 "(tabular, image_classifier, text_classifier), or change the policy.")
    mar = manifest.extra.get("mar") if manifest.format is ModelFormat.MAR else None
    requirements = mar.get("requirements_file") if isinstance(mar, dict) else None
    if requirements and not policy.rollout.allow_requirements:
        raise ArtifactRejected(
            f"{manifest.name}/{manifest.version}.mar asks to pip-install {requirements!r} at load time",
            reason=Reason.REQUIREMENTS_FORBIDDEN, file=str(requirements),
            hint="Rebuild the .mar without --requirements-file (pods serve with the packages they ship), or ask "
                 "an operator for a policy with rollout.allow_requirements (recorded, never installed).")
