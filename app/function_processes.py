"""``release up --functions``: one functions-framework process per function target, kept running.

Each target runs as Cloud Run would run it: ``functions-framework --target T --source functions/main.py``, one
process with a single worker (``WORKERS=1``), so the local pods the controller target starts belong to one
process. A process that dies is started again on its port and counted; ``/healthz`` reports each target.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog

from functions.main import TARGETS
from release.settings import Settings

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "functions" / "main.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def function_env(settings: Settings) -> dict[str, str]:
    """The environment of a function process: this process's, with the settings it resolved made explicit (a
    relative home or a default bucket would otherwise resolve against another working directory)."""
    env = dict(os.environ)
    env.update({"RELEASE_HOME": str(settings.home.resolve()), "RELEASE_BUCKET": settings.bucket_location,
                "RELEASE_DB_URL": settings.database_url, "WORKERS": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)})
    return env


@dataclass
class FunctionProcess:
    """One target's functions-framework process: where it listens, and how often it was restarted."""

    target: str
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    restarts: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Where the target answers."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        """The functions-framework process id, while one is started."""
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start the process (output appended to ``log_dir/TARGET.log``). The port is chosen once and kept across
        restarts, so push subscriptions keep their endpoint, like a deployed function's URL."""
        self.port = self.port or _free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{self.target}.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "functions_framework", "--target", self.target, "--source", str(SOURCE),
                 "--signature-type", TARGETS[self.target], "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        log.info("function.started", target=self.target, pid=self.proc.pid, port=self.port)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def wait_listening(self, timeout_s: float) -> None:
        """Return once the target answers HTTP; ``RuntimeError`` if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"functions-framework for {self.target} exited; see {self.log_dir}")
            try:
                httpx.get(self.url, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)  # the port opens when the server binds; there is nothing to await
        raise RuntimeError(f"functions-framework for {self.target} did not answer within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL once ``timeout_s`` passes."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class FunctionSupervisor:
    """The function processes of ``release up --functions``, restarted when they die."""

    processes: dict[str, FunctionProcess]
    start_timeout_s: float = 120.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_targets(cls, targets: tuple[str, ...], settings: Settings) -> FunctionSupervisor:
        """A supervisor of ``targets`` (not started) with the settings' environment and logs under HOME."""
        env, logs = function_env(settings), settings.home.resolve() / "functions"
        return cls(processes={t: FunctionProcess(target=t, env=env, log_dir=logs) for t in targets})

    def start(self) -> None:
        """Start every process, then wait until each answers."""
        for process in self.processes.values():
            process.start()
        for process in self.processes.values():
            process.wait_listening(self.start_timeout_s)

    def url(self, target: str) -> str:
        """Where ``target`` answers."""
        with self._lock:
            return self.processes[target].url

    def check(self) -> list[str]:
        """Restart the processes that died; returns their targets."""
        restarted = []
        for target, process in self.processes.items():
            if process.alive():
                continue
            code = None if process.proc is None else process.proc.returncode
            log.warning("function.died", target=target, pid=process.pid, exit_code=code)
            with self._lock:
                process.restarts += 1
                process.start()
            restarted.append(target)
        return restarted

    def health(self) -> dict[str, dict[str, object]]:
        """Per target: pid, port, whether it runs, restarts so far."""
        return {t: {"pid": p.pid, "port": p.port, "alive": p.alive(), "restarts": p.restarts}
                for t, p in self.processes.items()}

    def stop(self) -> None:
        """Stop every process."""
        for process in self.processes.values():
            process.stop()
