"""A pod serves exactly the bytes that were registered: the digest recorded at registration travels to the pod,
and any other bytes, however they got there, end the version FAILED with ``checksum_mismatch``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from release import journal, registry
from release.adapters.local_serving import LocalServingBackend
from release.artifacts import materialize
from release.bootstrap import App
from release.db import session_scope
from release.ports import DeploymentSpec
from schemas.digest import manifest_digest
from schemas.errors import PermanentError, Reason
from schemas.manifest import Manifest
from schemas.states import VersionState
from tests.e2e.test_embedded_flow import FAST, MODEL, drain, drop, embedded_app, put_policy, trained, version
from tests.security.sandbox_kit import model_dir, safetensors_digits


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The embedded default app under a fresh RELEASE_HOME."""
    with embedded_app(tmp_path / "home", monkeypatch) as application:
        yield application


def rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a file and make the folder's manifest agree with it, as someone covering their tracks would."""
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def failures(app: App) -> list[dict[str, object]]:
    """The payloads of every rollout.failed event journalled."""
    with session_scope(app.engine) as s:
        return [r.envelope["data"] for r in journal.recent(s, limit=1000) if r.type.endswith("rollout.failed.v1")]


def test_a_pod_given_other_bytes_than_registered_refuses_with_checksum_mismatch(tmp_path: Path):
    """Weights swapped and the manifest rewritten to match: the pod checks the registered digest, exits 4 before
    loading anything, and the backend fails the rollout with checksum_mismatch."""
    artifact = safetensors_digits(tmp_path / "st")
    registered = manifest_digest(Manifest.model_validate_json((artifact / "manifest.json").read_text()))
    other = safetensors_digits(tmp_path / "other")
    rewrite(artifact, "model.safetensors", (other / "model.safetensors").read_bytes())
    spec = DeploymentSpec(model="digits", version="1", artifact_uri=artifact.as_uri(), local_path=artifact,
                          digest=registered)
    backend = LocalServingBackend(home=tmp_path / "home", pod_user="", restart_backoff_s=0.1, stop_grace_s=5)
    try:
        backend.deploy(spec)
        with pytest.raises(PermanentError) as caught:
            backend.wait_ready(spec, timeout_s=90)
    finally:
        backend.close()

    excerpt = caught.value.details["log_excerpt"]
    assert caught.value.reason is Reason.CHECKSUM_MISMATCH
    assert '"reason": "checksum_mismatch"' in excerpt and registered in excerpt
    assert "pod.starting" not in excerpt and "replica 0 exited with 4" in str(caught.value)


def test_bytes_swapped_in_the_bucket_after_registration_end_failed_checksum_mismatch(app: App):
    """Registered, then the weights are overwritten in the bucket: the version ends FAILED checksum_mismatch and
    no pod ever starts."""
    bucket = Path(app.settings.bucket_location)
    put_policy(app, FAST)
    drop(bucket, "1", trained("baseline"))
    assert [r.status for r in app.intake.reconcile(final=True)] == ["registered"]
    weights = bucket / "models" / MODEL / "1" / "model.pt"
    weights.write_bytes(bytes(reversed(weights.read_bytes())))
    drain(app)

    v1 = version(app, "1")
    assert v1.state is VersionState.FAILED and "[checksum_mismatch]" in v1.state_reason
    assert [f["reason"] for f in failures(app)] == ["checksum_mismatch"]
    assert app.serving.status(MODEL, "1") is None
    assert not (app.settings.home / "pods" / MODEL / "1").exists()


def test_a_tampered_local_copy_is_refused_by_the_pod_and_fails_the_version(app: App):
    """The verified local copy is altered (weights and manifest together) before the pods start: the pod refuses
    with checksum_mismatch and the version ends FAILED with that reason and the pod's log line."""
    bucket = Path(app.settings.bucket_location)
    put_policy(app, FAST)
    drop(bucket, "1", trained("baseline"))
    app.intake.reconcile(final=True)
    copy = materialize(app.store, version(app, "1"), cache=app.settings.home.resolve() / "artifacts")
    rewrite(copy, "model.pt", trained("regressed"))
    drain(app)

    v1 = version(app, "1")
    assert v1.state is VersionState.FAILED and "[checksum_mismatch]" in v1.state_reason
    [failed] = failures(app)
    assert failed["reason"] == "checksum_mismatch"
    assert '"reason": "checksum_mismatch"' in str(failed["log_excerpt"])
    assert "pod.starting" not in str(failed["log_excerpt"])


def test_intake_records_each_file_generation_at_registration(app: App, tmp_path: Path):
    """Registration keeps the generation of every file and of the manifest, which Kubernetes pods copy."""
    bucket = Path(app.settings.bucket_location)
    source = model_dir(tmp_path / "src", {"model.pt": trained("baseline")}, name=MODEL, version="1",
                       format="torchscript", handler="tabular")
    target = bucket / "models" / MODEL / "1"
    target.mkdir(parents=True)
    (target / "model.pt").write_bytes((source / "model.pt").read_bytes())
    (target / "manifest.json").write_text((source / "manifest.json").read_text())
    app.intake.reconcile(final=True)

    with session_scope(app.engine) as s:
        view = registry.get_version(s, MODEL, "1")
    expected = {name: app.store.stat(f"models/{MODEL}/1/{name}").generation for name in ("model.pt", "manifest.json")}
    assert view.generations == expected and all(expected.values())
