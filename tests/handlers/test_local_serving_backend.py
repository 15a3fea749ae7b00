"""The local serving backend runs real pod processes: deploy, readiness, idempotency, restarts, failures, adoption."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pod_testkit import REPO, Artifacts, Digits, eventually, infer_body

from release.adapters.local_serving import LocalServingBackend
from release.ports import DeploymentSpec
from schemas.errors import PermanentError, Reason


def spec_for(path: Path, *, model: str = "digits", version: str = "1", replicas: int = 1) -> DeploymentSpec:
    """A deployment spec for a local artifact."""
    return DeploymentSpec(model=model, version=version, artifact_uri=path.as_uri(), local_path=path,
                          replicas=replicas, max_batch_size=8, max_batch_delay_ms=1.0)


def test_deploy_is_ready_idempotent_and_serves(backend: LocalServingBackend, artifacts: Artifacts,
                                               digits: Digits, tmp_path: Path):
    """Two replicas become ready, serve predictions, log under home/pods, and a second deploy changes nothing."""
    spec = spec_for(artifacts.digits_ts, replicas=2)
    first = backend.deploy(spec)
    assert not first.ready and first.replicas == 2
    status = backend.wait_ready(spec, timeout_s=60)
    assert status.ready and status.ready_replicas == 2 and len(status.endpoints) == 2
    for endpoint in status.endpoints:
        response = httpx.post(f"{endpoint}/v2/models/digits/infer", json=infer_body(digits.x[:1]), timeout=30)
        assert response.status_code == 200
    again = backend.deploy(spec)
    assert again.endpoints == status.endpoints and again.ready
    pods = json.loads((tmp_path / "home" / "pods" / "state.json").read_text())["pods"]
    assert len(pods) == 2
    assert (tmp_path / "home" / "pods" / "digits" / "1" / "replica-1.log").read_text()


def test_killed_pod_is_restarted(backend: LocalServingBackend, artifacts: Artifacts):
    """A pod killed with SIGKILL is restarted by the supervisor on the same endpoint and counted."""
    spec = spec_for(artifacts.digits_ts)
    backend.deploy(spec)
    endpoint = backend.wait_ready(spec, timeout_s=60).endpoints[0]
    pid = json.loads(backend.state_path.read_text())["pods"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: backend.restarts("digits", "1"), lambda restarts: restarts > 0)
    status = backend.wait_ready(spec, timeout_s=60)
    assert status.endpoints == (endpoint,) and backend.restarts("digits", "1") == 1
    assert json.loads(backend.state_path.read_text())["pods"][0]["pid"] != pid


def test_pod_that_cannot_load_fails_with_log_excerpt(backend: LocalServingBackend, artifacts: Artifacts,
                                                     tmp_path: Path):
    """A pod whose bytes differ from its manifest fails wait_ready with checksum_mismatch and the pod log's reason."""
    broken = Path(shutil.copytree(artifacts.digits_ts, tmp_path / "broken"))
    (broken / "model.pt").write_bytes(b"x" * (broken / "model.pt").stat().st_size)
    spec = spec_for(broken)
    backend.deploy(spec)
    with pytest.raises(PermanentError) as caught:
        backend.wait_ready(spec, timeout_s=60)
    assert caught.value.reason is Reason.CHECKSUM_MISMATCH
    assert "checksum_mismatch" in caught.value.details["log_excerpt"]
    assert backend.restarts("digits", "1") == 0


def test_check_ready_never_waits_and_fails_at_once_on_an_exited_pod(backend: LocalServingBackend,
                                                                   artifacts: Artifacts, tmp_path: Path):
    """check_ready answers from one look: ready eventually, and a pod that refused its bytes fails it at once."""
    good = spec_for(artifacts.digits_ts, version="good")
    backend.deploy(good)
    eventually(lambda: backend.check_ready(good).ready, bool)
    broken = Path(shutil.copytree(artifacts.digits_ts, tmp_path / "broken"))
    (broken / "model.pt").write_bytes(b"x" * (broken / "model.pt").stat().st_size)
    bad = spec_for(broken, version="bad")
    backend.deploy(bad)
    assert not backend.check_ready(bad).ready  # just started: nothing has exited yet

    def refused() -> bool:
        try:
            backend.check_ready(bad)
        except PermanentError as error:
            return error.reason is Reason.CHECKSUM_MISMATCH
        return False

    eventually(refused, bool)


def test_retire_stops_pods(backend: LocalServingBackend, artifacts: Artifacts):
    """Retire stops the pods and forgets the version; retiring again is a no-op."""
    spec = spec_for(artifacts.digits_ts)
    backend.deploy(spec)
    endpoint = backend.wait_ready(spec, timeout_s=60).endpoints[0]
    backend.retire("digits", "1")
    assert backend.status("digits", "1") is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{endpoint}/v2/health/live", timeout=2)
    backend.retire("digits", "1")
    assert json.loads(backend.state_path.read_text())["pods"] == []


def test_restarted_control_plane_adopts_running_pods(artifacts: Artifacts, tmp_path: Path):
    """Pods left by a control plane that died are adopted by the next one (same pid), which then stops them."""
    home = tmp_path / "home"
    script = (
        "import os; from pathlib import Path; from release.adapters.local_serving import LocalServingBackend; "
        "from release.ports import DeploymentSpec; "
        "spec = DeploymentSpec(model='digits', version='1', artifact_uri='', "
        f"local_path=Path({str(artifacts.digits_ts)!r})); "
        f"b = LocalServingBackend(home=Path({str(home)!r})); b.deploy(spec); b.wait_ready(spec, timeout_s=60); "
        "os._exit(0)")
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    pid = json.loads((home / "pods" / "state.json").read_text())["pods"][0]["pid"]
    successor = LocalServingBackend(home=home, stop_grace_s=5)
    try:
        status = successor.status("digits", "1")
        assert status is not None and status.ready
        same = successor.deploy(DeploymentSpec(model="digits", version="1", artifact_uri="",
                                               local_path=artifacts.digits_ts))
        assert same.endpoints == status.endpoints
        assert json.loads((home / "pods" / "state.json").read_text())["pods"][0]["pid"] == pid
    finally:
        successor.close()
    eventually(lambda: running(pid), lambda alive: not alive)  # the adopted pod is stopped with its successor


def running(pid: int) -> bool:
    """True while ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
