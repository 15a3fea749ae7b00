"""Bench-only podless serving for the 200-version run: one farm process serves every version, no pod each.

Why bench-only and not a selectable backend in ``release/adapters/``: the farm loads every version's model into
one process. That process is not sandboxed per version, so it breaks the trust model (``docs/security.md``: a
version's code runs only in its own sandboxed pod); it exists to take pod start-up and per-pod memory out of the
measurement, so what remains is the control plane's own cost.

It is still real serving, not a stub: each version is loaded by the pod runtime itself (``handlers.dataplane
.load_runtime`` with ``--expect-digest``, so the registered bytes are checked) and answered by the pod's own
Starlette app (``handlers.app``) on its own loopback port, each in a thread of the farm. The gates' eval set,
latency load and smoke requests, and the router's predictions, reach real models.

    python bench/scale/farm.py serve --port P     # the farm (started by the controller below)
    python bench/scale/farm.py controller          # ``release up --only controller`` with FarmServing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx

from bench.scale.cluster import free_port
from release.ports import DeploymentSpec, DeploymentStatus
from schemas.errors import PermanentError, Reason

FARM = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------------- the farm process
class _Farm:
    """Versions served by this process: port -> (uvicorn server, load error)."""

    def __init__(self) -> None:
        self.servers: dict[int, Any] = {}
        self.errors: dict[int, str] = {}

    def load(self, argv: list[str]) -> None:
        from handlers.app import PodApi
        from handlers.dataplane import load_runtime
        from handlers.draining_server import uvicorn_config
        from handlers.settings import parse_settings
        from schemas.errors import ReleaseError

        settings = parse_settings(argv, environ={})
        try:
            runtime = load_runtime(settings)
        except ReleaseError as error:
            self.errors[settings.port] = f"[{error.reason}] {error.message}"
            return
        import uvicorn

        server = uvicorn.Server(uvicorn_config(PodApi(runtime), settings))
        self.servers[settings.port] = server
        server.run()  # this thread serves the version until retired
        runtime.batcher.stop()

    def retire(self, port: int) -> None:
        server = self.servers.pop(port, None)
        if server is not None:
            server.should_exit = True


def serve(port: int) -> None:
    farm = _Farm()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path == "/load":
                threading.Thread(target=farm.load, args=(body["argv"],), daemon=True).start()
            elif self.path == "/retire":
                farm.retire(int(body["port"]))
            self._reply({"ok": True})

        def do_GET(self) -> None:
            self._reply({"errors": {str(p): e for p, e in farm.errors.items()}, "serving": list(farm.servers)})

        def log_message(self, *args: Any) -> None:
            return

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


# ---------------------------------------------------------------------------------------------- the backend
class FarmServing:
    """``ServingBackend`` whose replicas are servers in the farm process (one replica per version)."""

    name = "farm"

    def __init__(self) -> None:
        self.port = free_port()
        self.work = Path(tempfile.mkdtemp(prefix="farm-"))
        self.process = subprocess.Popen([sys.executable, str(FARM), "serve", "--port", str(self.port)])
        self.http = httpx.Client(timeout=10.0)
        self.deployed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.http.get(self._url())
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the farm did not start")

    def _url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def deploy(self, spec: DeploymentSpec) -> DeploymentStatus:
        with self._lock:
            if (spec.model, spec.version) not in self.deployed:
                port = free_port()
                argv = ["--artifact", str(spec.local_path), "--host", "127.0.0.1", "--port", str(port),
                        "--max-batch-size", str(spec.max_batch_size), "--max-batch-delay-ms",
                        str(spec.max_batch_delay_ms), "--device", "cpu", "--torch-threads", "1",
                        "--work-dir", str(self.work / f"{spec.model}-{spec.version}-{port}")]
                if spec.digest:
                    argv += ["--expect-digest", spec.digest]
                self.http.post(self._url("/load"), json={"argv": argv})
                self.deployed[(spec.model, spec.version)] = port
        return self._status(spec.model, spec.version)

    def wait_ready(self, spec: DeploymentSpec, *, timeout_s: float) -> DeploymentStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.check_ready(spec, give_up=time.monotonic() >= deadline)
            if status.ready:
                return status
            time.sleep(0.05)

    def check_ready(self, spec: DeploymentSpec, *, give_up: bool = False) -> DeploymentStatus:
        """One look: ready, not yet, or ``ROLLOUT_FAILED`` when the farm could not load it (or ``give_up``)."""
        port = self.deployed.get((spec.model, spec.version))
        if port is None:
            raise PermanentError(f"{spec.model}/{spec.version} is not deployed", reason=Reason.ROLLOUT_FAILED)
        status = self._status(spec.model, spec.version)
        if status.ready:
            return status
        error = self.http.get(self._url()).json()["errors"].get(str(port))
        if error or give_up:
            why = error or "not ready in time"
            raise PermanentError(f"{spec.model}/{spec.version} failed to load: {why}",
                                 reason=Reason.ROLLOUT_FAILED, details={"log_excerpt": why})
        return status

    def _status(self, model: str, version: str) -> DeploymentStatus:
        port = self.deployed[(model, version)]
        try:
            ready = self.http.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
        except httpx.HTTPError:
            ready = False
        return DeploymentStatus(model=model, version=version, ready=ready, endpoints=(f"http://127.0.0.1:{port}",),
                                ready_replicas=int(ready), replicas=1)

    def status(self, model: str, version: str) -> DeploymentStatus | None:
        return self._status(model, version) if (model, version) in self.deployed else None

    def retire(self, model: str, version: str) -> None:
        with self._lock:
            port = self.deployed.pop((model, version), None)
        if port is not None:
            self.http.post(self._url("/retire"), json={"port": port})

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.work, ignore_errors=True)


def run_controller() -> int:
    """``release up --only controller`` from the same settings, with ``FarmServing`` as the serving backend."""
    from app.stack import run_stack
    from release.bootstrap import bootstrap
    from release.settings import Settings

    app = bootstrap(Settings())
    return run_stack(dataclasses.replace(app, _serving=FarmServing()), role="controller")


def controller_command() -> list[str]:
    return [sys.executable, str(FARM), "controller"]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("what", choices=("serve", "controller"))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.what == "serve":
        serve(args.port)
        return 0
    return run_controller()


if __name__ == "__main__":
    sys.exit(main())
