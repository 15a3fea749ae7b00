"""The local backend's warm pool and memory budget: spares replace themselves, serve with the version's own
settings, are adopted like any pod, and a deployment that does not fit the pods' memory budget waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pod_testkit import REPO, Artifacts, Digits, eventually, infer_body
from test_local_serving_backend import running, spec_for

from release.adapters.local_serving import LocalServingBackend
from release.adapters.pod_memory import tree_rss
from release.ports import DeploymentSpec
from schemas.errors import Reason, TemporaryError


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[LocalServingBackend]:
    """A local backend keeping one warm spare; closed (pods and spares stopped) after the test."""
    local = LocalServingBackend(home=tmp_path / "home", warm_pods=1, restart_backoff_s=0.1, stop_grace_s=5)
    yield local
    local.close()


def test_a_taken_spare_serves_with_the_versions_workers_and_is_replaced(warm: LocalServingBackend,
                                                                       artifacts: Artifacts, digits: Digits):
    """The deployment takes the spare, which serves with the spec's two HTTP workers; a new spare takes its place."""
    (spare,) = warm.pool.pids()
    spec = DeploymentSpec(model="digits", version="1", artifact_uri="", local_path=artifacts.digits_ts,
                          http_workers=2, max_batch_size=8, max_batch_delay_ms=1.0)
    warm.deploy(spec)
    endpoint = warm.wait_ready(spec, timeout_s=60).endpoints[0]

    response = httpx.post(f"{endpoint}/v2/models/digits/infer", json=infer_body(digits.x[:1]), timeout=30)
    assert response.status_code == 200 and response.headers["x-pod-worker"]
    assert json.loads(warm.state_path.read_text())["pods"][0]["pid"] == spare
    replacement = eventually(warm.pool.pids, lambda pids: len(pids) == 1 and pids[0] != spare)
    assert running(replacement[0])
    # Spares wait at a low priority (when the control plane can undo it); every thread of a taken pod runs normal.
    assert set(thread_nice(spare)) == {0}
    assert set(thread_nice(replacement[0])) == {warm.pool.nice} == ({10} if os.geteuid() == 0 else {0})


def thread_nice(pid: int) -> list[int]:
    """The nice value of each thread of ``pid``."""
    return [os.getpriority(os.PRIO_PROCESS, int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()]


def test_a_spare_that_died_is_replaced(warm: LocalServingBackend):
    """A spare killed while it waits is replaced by a new one."""
    (spare,) = warm.pool.pids()
    os.kill(spare, signal.SIGKILL)
    eventually(warm.pool.pids, lambda pids: len(pids) == 1 and pids[0] != spare)


def test_a_pod_from_a_spare_is_adopted_and_the_spare_left_behind_exits(artifacts: Artifacts, tmp_path: Path):
    """A control plane that dies leaves its warm-started pod to the next one (same pid), and its waiting spare
    reads end of input and exits instead of leaking."""
    home = tmp_path / "home"
    script = (
        "import os, time; from pathlib import Path; from release.adapters.local_serving import LocalServingBackend; "
        "from release.ports import DeploymentSpec; "
        "spec = DeploymentSpec(model='digits', version='1', artifact_uri='', "
        f"local_path=Path({str(artifacts.digits_ts)!r})); "
        f"b = LocalServingBackend(home=Path({str(home)!r}), warm_pods=1); b.deploy(spec); "
        "b.wait_ready(spec, timeout_s=60)\n"
        "while not b.pool.pids(): time.sleep(0.05)\n"
        "print(b.pool.pids()[0]); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    left_spare = int(done.stdout.split()[-1])
    pid = json.loads((home / "pods" / "state.json").read_text())["pods"][0]["pid"]
    successor = LocalServingBackend(home=home, stop_grace_s=5)
    try:
        status = successor.status("digits", "1")
        assert status is not None and status.ready
        assert json.loads((home / "pods" / "state.json").read_text())["pods"][0]["pid"] == pid
    finally:
        successor.close()
    eventually(lambda: running(left_spare), lambda alive: not alive)


def test_a_deploy_that_does_not_fit_the_memory_budget_waits_with_capacity(artifacts: Artifacts, tmp_path: Path):
    """With a 1 MiB budget no spare is started, and the deploy is refused as a TemporaryError (capacity) without
    starting any pod."""
    backend = LocalServingBackend(home=tmp_path / "home", memory_mb=1, warm_pods=1)
    try:
        assert backend.pool.pids() == []
        with pytest.raises(TemporaryError) as caught:
            backend.deploy(spec_for(artifacts.digits_ts))
        assert backend.status("digits", "1") is None
        assert json.loads(backend.state_path.read_text())["pods"] == []
    finally:
        backend.close()
    assert caught.value.reason is Reason.CAPACITY and "1 MiB budget" in caught.value.message


def test_pod_memory_counts_the_whole_process_tree():
    """A process's resident memory includes its children's: a pod's forked fronts count against the budget."""
    child = "b = bytearray(64 << 20); print('ready', flush=True); import sys; sys.stdin.read()"
    parent = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {child!r}]); p.wait()")
    process = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        (size,) = tree_rss([process.pid])
        assert size > 64 << 20
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the child reads end of input and exits, then its parent
        process.wait(timeout=30)
