"""A warm pod (a spare from the local backend's pool) keeps every promise of a cold one: the sandbox's environment,
folder and account, only its own artifact, the registered bytes or nothing.

Real spare processes with torch imported, taken by real deployments of real TorchScript and safetensors models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from release.adapters.local_serving import LocalServingBackend
from release.ports import DeploymentSpec
from schemas.digest import manifest_digest
from schemas.errors import PermanentError, Reason
from schemas.manifest import Manifest
from tests.artifacts import DigitsMLP
from tests.security.sandbox_kit import SPY_HANDLER, model_dir, pod_python, safetensors_digits, scripted
from tests.security.test_pinned_bytes import rewrite
from tests.security.test_pod_sandbox import AS_ROOT, SECRETS, infer, shared_folder, spec

#: Also records what the pod can list: its own folder, and (it must fail) the folder of every pod's folder.
LISTING_SPY = SPY_HANDLER.replace('"uid": os.getuid()}', '''"uid": os.getuid(),
     "own": sorted(os.listdir(os.environ["HOME"])), "neighbours": _neighbours()}''').replace(
    "Path(os.environ.get", '''def _neighbours():
    try:
        return sorted(os.listdir(Path(os.environ["HOME"]).parent))
    except OSError as e:
        return type(e).__name__


Path(os.environ.get''', 1)


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServingBackend]:
    """A local backend with one warm spare, whose control plane holds secrets in its environment."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    local = LocalServingBackend(home=tmp_path / "home", python=pod_python(shared_folder()), warm_pods=1,
                                pod_user="nobody" if AS_ROOT else "", restart_backoff_s=0.1, stop_grace_s=5)
    yield local
    local.close()


def served_pid(backend: LocalServingBackend) -> int:
    """The pid of the one pod the backend records as serving."""
    (record,) = json.loads(backend.state_path.read_text())["pods"]
    return int(record["pid"])


def test_a_warm_pod_has_the_sandbox_and_sees_only_its_own_artifact(backend: LocalServingBackend, tmp_path: Path):
    """The deployment takes the spare (same process), whose handler code finds no secret, runs in its own folder
    as the pod account, holds only its own artifact there and cannot list any other pod's folder."""
    spares = backend.pool.pids()
    artifact = model_dir(tmp_path / "spy", {"model.pt": scripted(DigitsMLP(hidden=16)),
                                            "spy.py": LISTING_SPY.encode()},
                         name="digits", version="1", format="torchscript", handler="spy.py",
                         extra={"model_file": "model.pt"})
    backend.deploy(spec(artifact))
    status = backend.wait_ready(spec(artifact), timeout_s=90)
    assert infer(status.endpoints[0], "digits").status_code == 200

    assert spares and served_pid(backend) == spares[0]
    folder = Path(json.loads(backend.state_path.read_text())["pods"][0]["folder"])
    seen = json.loads((folder / "seen.json").read_text())
    assert not [name for name in seen["environ"] if name.startswith("RELEASE_") or name in SECRETS]
    assert not [value for value in seen["environ"].values() if "tok-secret-123" in value or "pw@db" in value]
    assert Path(seen["cwd"]) == folder and Path(seen["environ"]["HOME"]) == folder
    assert seen["own"] == ["artifact", "cache", "tmp", "work"]
    if AS_ROOT:
        assert seen["neighbours"] == "PermissionError"
        assert seen["uid"] == 65534 and folder.stat().st_uid == 65534


def test_a_warm_pod_refuses_a_tampered_artifact(backend: LocalServingBackend, tmp_path: Path):
    """Weights swapped and the manifest rewritten: the spare checks the registered digest, exits 4 before loading
    anything, and the rollout fails with checksum_mismatch."""
    spares = backend.pool.pids()
    artifact = safetensors_digits(tmp_path / "st")
    registered = manifest_digest(Manifest.model_validate_json((artifact / "manifest.json").read_text()))
    rewrite(artifact, "model.safetensors", (safetensors_digits(tmp_path / "other") / "model.safetensors").read_bytes())
    pinned = DeploymentSpec(model="digits", version="1", artifact_uri=artifact.as_uri(), local_path=artifact,
                            digest=registered, allow_model_code=False)
    backend.deploy(pinned)
    with pytest.raises(PermanentError) as caught:
        backend.wait_ready(pinned, timeout_s=90)

    excerpt = caught.value.details["log_excerpt"]
    assert served_pid(backend) == spares[0]
    assert caught.value.reason is Reason.CHECKSUM_MISMATCH and "replica 0 exited with 4" in str(caught.value)
    assert '"reason": "checksum_mismatch"' in excerpt and "pod.starting" not in excerpt


def test_a_warm_pod_serves_the_registered_bytes(backend: LocalServingBackend, tmp_path: Path):
    """The spare answers with exactly the registered model's outputs, under its pinned digest."""
    model = DigitsMLP(hidden=16).eval()
    artifact = model_dir(tmp_path / "ts", {"model.pt": scripted(model)}, name="digits", version="1",
                         format="torchscript", handler="tabular")
    pinned = DeploymentSpec(model="digits", version="1", artifact_uri=artifact.as_uri(), local_path=artifact,
                            digest=manifest_digest(Manifest.model_validate_json((artifact / "manifest.json")
                                                                                .read_text())))
    spares = backend.pool.pids()
    backend.deploy(pinned)
    status = backend.wait_ready(pinned, timeout_s=90)

    response = infer(status.endpoints[0], "digits")
    with torch.no_grad():
        expected = model(torch.full((1, 64), 0.5)).numpy().ravel()
    assert served_pid(backend) == spares[0] and response.status_code == 200
    np.testing.assert_allclose(np.array(response.json()["outputs"][0]["data"]), expected, rtol=1e-5, atol=1e-6)
    assert os.path.exists(backend.pods_dir / "digits" / "1" / "replica-0.log")
