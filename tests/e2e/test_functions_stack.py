"""``release up --functions``: the demo's three versions through function processes fed by HTTP push.

The stack runs as a user starts it (``python -m app.cli up --functions``) on the embedded default: a bucket
folder, SQLite, the local bus and real pods. Versions are dropped one after another, as the demo does, and each
must reach the demo's end: v1 then v2 ``PROD``, v3 ``REJECTED`` with its gate report, on the local bus and on
Pub/Sub. The process tree shows one functions-framework process per target and no consumer threads of the
release path; stopping it stops the pods.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.stack import FUNCTION_TARGETS
from release import registry
from release.db import make_engine, session_scope
from schemas.states import VersionState
from tests.e2e.test_embedded_flow import FAST, drop, trained
from tests.servers.gcs_server import free_port
from tests.servers.pubsub_server import PubSubServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class Stack:
    """A running ``release up --functions`` and how to read its store."""

    def __init__(self, proc: subprocess.Popen[bytes], home: Path, url: str, bus: str) -> None:
        self.proc, self.home, self.url, self.bus = proc, home, url, bus
        self.engine = make_engine(f"sqlite:///{home / 'release.db'}")

    def wait_for(self, version: str, state: VersionState, timeout_s: float = 240.0) -> None:
        """Until ``version`` of digits is in ``state`` (a settled state other than it fails at once)."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with session_scope(self.engine) as s:
                known = any(m.name == "digits" for m in registry.list_models(s))
                versions = {v.version: v for v in registry.list_versions(s, "digits")} if known else {}
            view = versions.get(version)
            seen = view and view.state
            if seen is state:
                return
            assert seen not in (VersionState.FAILED, VersionState.REJECTED), (version, seen, view.state_reason)
            time.sleep(0.2)  # the registry has no change feed to await here; the event stream is tested elsewhere
        raise AssertionError(f"digits {version} is {seen}, not {state}, after {timeout_s}s\n{self.log()}")

    def prod(self) -> str | None:
        """The version PROD points at."""
        with session_scope(self.engine) as s:
            alias = registry.find_alias(s, "digits", "PROD")
            return alias.version if alias else None

    def pod_pids(self) -> list[int]:
        """The pods the controller function runs (its serving backend's state file)."""
        state = self.home / "pods" / "state.json"
        return [p["pid"] for p in json.loads(state.read_text())["pods"]] if state.exists() else []

    def log(self) -> str:
        """The tail of the stack's and the function processes' logs."""
        logs = [self.home.parent / "up.log", *sorted((self.home / "functions").glob("*.log"))]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())


@pytest.fixture(params=["local", "pubsub"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """``release up --functions`` under a fresh home, serving on a free port, on the local bus (push dispatchers)
    or on the local Pub/Sub server (push subscriptions); stopped with SIGTERM after."""
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASE_")}
    env.update({"RELEASE_HOME": str(home), "RELEASE_PORT": str(port), "RELEASE_GPU": "off",
                "RELEASE_POLICY_JSON": json.dumps(FAST), "RELEASE_LOG_FORMAT": "json",
                "RELEASE_LOG_LEVEL": "INFO", "RELEASE_POLL_INTERVAL_S": "0.2", "PYTHONPATH": str(ROOT)})
    if request.param == "pubsub":
        server = PubSubServer()
        env.update({"RELEASE_BUS": "pubsub", "PUBSUB_EMULATOR_HOST": server.start()})
        request.addfinalizer(server.stop)
    with (tmp_path / "up.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--functions"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    running = Stack(proc, home, f"http://127.0.0.1:{port}", request.param)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, running.log()
            try:
                if httpx.get(f"{running.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # the port opens once every function process answers; nothing to await before
        yield running
    finally:
        pods = running.pod_pids()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert pods, "no pods were recorded: the check below would prove nothing"
    assert not [pid for pid in pods if Path(f"/proc/{pid}").exists()], "pods outlived release up --functions"


def function_processes(pid: int) -> dict[str, list[int]]:
    """The functions-framework children of ``pid`` (from /proc), by the target they serve."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue  # not a process, or one that just exited
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and "functions_framework" in cmd:
            found.setdefault(cmd[cmd.index("--target") + 1], []).append(int(entry.name))
    return found


def test_functions_stack_takes_the_demo_to_its_end(stack: Stack) -> None:
    """v1 then v2 become PROD and v3 is REJECTED with its gate report, all through one process per function
    target, which /healthz lists; a killed function process is restarted and reported."""
    processes = function_processes(stack.proc.pid)
    assert sorted(processes) == sorted(FUNCTION_TARGETS)
    assert all(len(pids) == 1 for pids in processes.values()), processes
    health = httpx.get(f"{stack.url}/healthz").json()
    assert {t: f["pid"] for t, f in health["functions"].items()} == {t: p[0] for t, p in processes.items()}
    assert not any(name in health["threads"] for name in ("controller", "drift-monitor", "drift-profiles"))
    # The local bus is pushed by dispatcher threads; Pub/Sub pushes by itself.
    assert ("push-controller" in health["threads"]) == (stack.bus == "local")

    bucket = stack.home / "bucket"
    for version, kind, end in (("1", "baseline", VersionState.LIVE), ("2", "better", VersionState.LIVE),
                               ("3", "regressed", VersionState.REJECTED)):
        drop(bucket, version, trained(kind))
        stack.wait_for(version, end)
        if end is VersionState.LIVE:
            assert stack.prod() == version
    assert stack.prod() == "2"
    with session_scope(stack.engine) as s:
        report = registry.latest_gate_report(s, registry.get_version(s, "digits", "3").id)
        profiled = registry.get_reference_profile(s, model="digits", version="3")
    assert report is not None and not report["passed"]
    assert profiled is not None

    os.kill(processes["on_alert"][0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (health := httpx.get(f"{stack.url}/healthz").json())["functions"]["on_alert"]["restarts"] < 1:
        assert time.monotonic() < deadline, health
        time.sleep(0.2)  # the supervisor's pass is periodic
    assert health["functions"]["on_alert"]["pid"] != processes["on_alert"][0]
