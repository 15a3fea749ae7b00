"""Model code runs only in a pod that holds nothing of the control plane, and only when the policy allows code.

Real pod processes from the local serving backend, real TorchScript and safetensors models. When these tests run
as root (CI does), the pods run as ``nobody`` and a model's forward pass is refused the control plane's files.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy.engine import Engine

from release import policies
from release.adapters.local_bucket import LocalFolderStore
from release.adapters.local_bus import LocalEventBus
from release.adapters.local_serving import LocalServingBackend
from release.adapters.pod_sandbox import pod_environment
from release.db import session_factory, session_scope
from release.intake import Intake
from release.ports import DeploymentSpec
from schemas import pod_exit
from schemas.errors import PermanentError, Reason
from schemas.policy import ReleasePolicy, RolloutPolicy
from tests.artifacts import manifest_for, torchscript_bytes, write_artifact
from tests.security.sandbox_kit import (
    CANARY,
    SPY_HANDLER,
    Snoop,
    model_dir,
    pod_python,
    safetensors_digits,
    scripted,
)

SECRETS = {"RELEASE_API_TOKEN": "tok-secret-123", "RELEASE_DB_URL": "postgresql://release:pw@db/release",
           "DATABASE_URL": "postgresql://release:pw@db/release", "GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json"}
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServingBackend]:
    """A local backend whose control plane holds secrets in its environment; its pods are stopped afterwards."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    python = pod_python(shared_folder())
    local = LocalServingBackend(home=tmp_path / "home", python=python, pod_user="nobody" if AS_ROOT else "",
                                restart_backoff_s=0.1, stop_grace_s=5)
    yield local
    local.close()


def shared_folder() -> Path:
    """A folder every account can traverse, for the pod interpreter (pytest's own temp folders are private)."""
    root = Path("/tmp") / f"pod-sandbox-tests-{os.getuid()}"
    root.mkdir(mode=0o755, exist_ok=True)
    return root


def spec(path: Path, *, model: str = "digits", version: str = "1", code: bool = True) -> DeploymentSpec:
    """A one-replica spec for a local model directory."""
    return DeploymentSpec(model=model, version=version, artifact_uri=path.as_uri(), local_path=path,
                          allow_model_code=code, max_batch_size=4, max_batch_delay_ms=1.0)


def infer(endpoint: str, model: str) -> httpx.Response:
    """One digits row through the pod's OIP endpoint."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    return httpx.post(f"{endpoint}/v2/models/{model}/infer", json=body, timeout=30)


def test_handler_code_sees_no_secrets_and_lives_in_its_own_folder(backend: LocalServingBackend, tmp_path: Path):
    """A pod's handler code finds no RELEASE_* token, no database URL and no cloud key, and runs in its own folder
    under its own account, while RELEASE_HOME is closed (0700)."""
    artifact = model_dir(tmp_path / "spy", {"model.pt": torchscript_bytes(), "spy.py": SPY_HANDLER.encode()},
                         name="digits", version="1", format="torchscript", handler="spy.py",
                         extra={"model_file": "model.pt"})
    backend.deploy(spec(artifact))
    status = backend.wait_ready(spec(artifact), timeout_s=90)
    assert infer(status.endpoints[0], "digits").status_code == 200

    folder = backend.pod_root / "digits" / "1" / "replica-0"
    seen = json.loads((folder / "seen.json").read_text())
    assert not set(SECRETS) & set(seen["environ"])
    assert not [name for name in seen["environ"] if name.startswith("RELEASE_")]
    assert not [value for value in seen["environ"].values() if "tok-secret-123" in value or "pw@db" in value]
    assert Path(seen["cwd"]) == folder and Path(seen["environ"]["HOME"]) == folder
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    if AS_ROOT:
        assert seen["uid"] == 65534 and folder.stat().st_uid == 65534


@pytest.mark.skipif(not AS_ROOT, reason="only root can run pods as another account")
def test_torchscript_cannot_read_a_canary_outside_its_folder(backend: LocalServingBackend, tmp_path: Path):
    """A TorchScript forward that reads a file in RELEASE_HOME is denied as nobody: the pod never becomes ready and
    the canary's bytes appear nowhere."""
    canary = tmp_path / "home" / "canary.txt"
    canary.write_bytes(CANARY)
    artifact = model_dir(tmp_path / "snoop", {"model.pt": scripted(Snoop(str(canary)))}, name="digits",
                         version="1", format="torchscript", handler="tabular")
    backend.deploy(spec(artifact))
    with pytest.raises(PermanentError) as caught:
        backend.wait_ready(spec(artifact), timeout_s=90)

    excerpt = caught.value.details["log_excerpt"]
    assert caught.value.reason is Reason.ROLLOUT_FAILED
    assert "model_load_failed" in excerpt and "Permission denied" in excerpt
    assert CANARY.decode() not in excerpt and "67.0, 65.0, 78.0" not in excerpt


def test_torchscript_is_refused_by_the_pod_when_model_code_is_off(backend: LocalServingBackend, tmp_path: Path):
    """With allow_model_code off the pod refuses TorchScript as model_code_forbidden before running any of it."""
    canary = tmp_path / "outside.txt"
    canary.write_bytes(CANARY)
    artifact = model_dir(tmp_path / "snoop", {"model.pt": scripted(Snoop(str(canary)))}, name="digits",
                         version="1", format="torchscript", handler="tabular")
    backend.deploy(spec(artifact, code=False))
    with pytest.raises(PermanentError) as caught:
        backend.wait_ready(spec(artifact, code=False), timeout_s=90)

    excerpt = caught.value.details["log_excerpt"]
    assert '"reason": "model_code_forbidden"' in excerpt
    assert "pod.starting" not in excerpt and CANARY.decode() not in excerpt
    assert backend.restarts("digits", "1") == 0


def test_safetensors_serves_with_model_code_off(backend: LocalServingBackend, tmp_path: Path):
    """safetensors weights of a built-in architecture serve with allow_model_code off, loaded without pickle."""
    artifact = safetensors_digits(tmp_path / "st")
    backend.deploy(spec(artifact, code=False))
    status = backend.wait_ready(spec(artifact, code=False), timeout_s=90)

    response = infer(status.endpoints[0], "digits")
    assert response.status_code == 200
    probabilities = np.array(response.json()["outputs"][0]["data"], dtype=np.float32)
    assert probabilities.shape == (10,) and abs(float(probabilities.sum()) - 1.0) < 1e-4


def test_intake_registers_safetensors_and_refuses_torchscript_when_model_code_is_off(tmp_path: Path,
                                                                                   engine: Engine):
    """Under a policy without model code, intake refuses TorchScript (model_code_forbidden) and registers
    safetensors for a built-in architecture; the old field name allow_handler_code still reads as the switch."""
    bucket = tmp_path / "bucket"
    files = {"model.pt": torchscript_bytes()}
    write_artifact(bucket, "digits", "1", files, manifest_for("digits", "1", files))
    safe = safetensors_digits(tmp_path / "st", version="2")
    write_artifact(bucket, "digits", "2", {"model.safetensors": (safe / "model.safetensors").read_bytes()},
                   json.loads((safe / "manifest.json").read_text()))
    stored = RolloutPolicy.model_validate({"allow_handler_code": False})
    with session_scope(engine) as s:
        policies.set_policy(s, model="digits", policy=ReleasePolicy(rollout=stored), actor="operator",
                            reason="no code")
    intake = Intake(store=LocalFolderStore(root=bucket),
                    bus=LocalEventBus(session_factory=session_factory(engine)), engine=engine)

    results = {r.version: (r.status, r.reason) for r in intake.reconcile(final=True)}

    assert stored.allow_model_code is False
    assert results == {"1": ("rejected", "model_code_forbidden"), "2": ("registered", None)}


def test_pod_environment_is_an_allow_list() -> None:
    """Only locale, PATH, accelerator and thread variables pass; a deployment's env cannot smuggle RELEASE_* or
    credentials; HOME, TMPDIR and the code path are the pod's own."""
    parent = {**SECRETS, "PATH": "/usr/bin", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "2",
              "AWS_SECRET_ACCESS_KEY": "x", "SSH_AUTH_SOCK": "/run/agent", "PYTHONPATH": "/control/plane"}
    extra = {"RELEASE_API_TOKEN": "again", "GOOGLE_CLOUD_PROJECT": "p", "MODEL_FLAVOUR": "small"}
    env = pod_environment(folder=Path("/pods/m/1/replica-0"), code=Path("/code"), extra=extra, parent=parent)

    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "2",
                   "MODEL_FLAVOUR": "small", "HOME": "/pods/m/1/replica-0", "TMPDIR": "/pods/m/1/replica-0/tmp",
                   "XDG_CACHE_HOME": "/pods/m/1/replica-0/cache", "PYTHONPATH": "/code",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}


def test_pod_exit_codes_say_why_a_rollout_failed() -> None:
    """Exit 4 is checksum_mismatch, any other failure rollout_failed; neither 3 nor 4 is worth a restart."""
    assert pod_exit.exit_code_for(Reason.CHECKSUM_MISMATCH) == pod_exit.CHECKSUM_MISMATCH == 4
    assert pod_exit.exit_code_for(Reason.MODEL_CODE_FORBIDDEN) == pod_exit.LOAD_FAILED == 3
    assert pod_exit.reason_for(4) is Reason.CHECKSUM_MISMATCH
    assert pod_exit.reason_for(3) is pod_exit.reason_for(None) is Reason.ROLLOUT_FAILED
    assert {3, 4} == set(pod_exit.FINAL)


def test_a_pod_root_planted_by_someone_else_is_refused(tmp_path: Path) -> None:
    """A link planted where the pods' folders would go (a shared temp folder) is refused, not followed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = tmp_path / "pods"
    planted.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PermanentError) as caught:
        LocalServingBackend(home=tmp_path / "home", pod_root=planted)
    assert caught.value.reason is Reason.ROLLOUT_FAILED and "not a folder owned" in caught.value.message
