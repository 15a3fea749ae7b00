"""The control plane of a scale run: ``release up --only ROLE`` processes on one bucket folder and one store.

Roles run as separate processes (as the Deployments of ``deploy/k8s/control-plane.yaml`` do), each on its own
loopback port, configured only through ``RELEASE_*`` settings. ``restart(role)`` SIGKILLs a role and starts it
again, for the fault matrix.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.scale.observe import Sampler

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("intake", "controller", "monitor", "router")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """Role processes sharing ``home`` (bucket, pods, artifacts) and one database URL."""

    home: Path
    db_url: str
    policy: dict[str, object]
    sampler: Sampler
    env_extra: dict[str, str] = field(default_factory=dict)
    controller_command: list[str] | None = None  # a bench-only controller (podless serving) instead of the CLI
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASE_")}
        env.update({
            "PYTHONPATH": str(ROOT), "RELEASE_HOME": str(self.home), "RELEASE_BUCKET": str(self.home / "bucket"),
            "RELEASE_DB_URL": self.db_url, "RELEASE_PORT": str(self.ports[role]), "RELEASE_GPU": "off",
            "RELEASE_POLICY_JSON": json.dumps(self.policy), "RELEASE_POD_ROOT": str(self.home / "pods-root"),
            "RELEASE_LOG_FORMAT": "json", "RELEASE_LOG_LEVEL": "WARNING", "RELEASE_POLL_INTERVAL_S": "0.5",
            "RELEASE_RECONCILE_INTERVAL_S": "30", "RELEASE_ACK_DEADLINE_S": "120", "RELEASE_MAX_ATTEMPTS": "20",
        })
        env.update(self.env_extra)
        return env

    def start(self, role: str) -> None:
        """Start one role (a fresh process) and wait until its ``/healthz`` answers 200."""
        self.ports.setdefault(role, free_port())
        command = [sys.executable, "-m", "app.cli", "up", "--only", role]
        if role == "controller" and self.controller_command is not None:
            command = self.controller_command
        log = (self.home / f"{role}.log").open("ab")
        self.procs[role] = subprocess.Popen(command, cwd=ROOT, env=self.env(role), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.sampler.control[role] = self.procs[role].pid
        self.wait_healthy(role)

    def wait_healthy(self, role: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.ports[role]}/healthz"
        while time.monotonic() < deadline:
            if self.procs[role].poll() is not None:
                raise RuntimeError(f"{role} exited with {self.procs[role].returncode}; see {self.home}/{role}.log")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{role} not healthy after {timeout_s}s; see {self.home}/{role}.log")

    def start_all(self) -> None:
        # The controller first: it creates the subscription that intake's first events must find.
        for role in ("controller", "monitor", "intake", "router"):
            self.start(role)

    def kill(self, role: str) -> None:
        """SIGKILL a role (no cleanup runs, as when a node dies)."""
        self.sampler.sample()
        self.procs[role].send_signal(signal.SIGKILL)
        self.procs[role].wait()

    def restart(self, role: str) -> None:
        self.kill(role)
        self.start(role)

    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['router']}"

    def stop(self) -> None:
        """SIGTERM every role (the controller last: closing its backend stops the pods), then wait."""
        self.sampler.sample()
        for role in ("router", "intake", "monitor", "controller"):
            proc = self.procs.get(role)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
