"""Starting a real functions-framework process on a free port, as Cloud Functions would run our entry points."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers.gcs_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def start_function(target: str, signature: str, *, env: dict[str, str], log: Path,
                   timeout_s: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``functions/main.py:target`` and return the process and its URL once it answers HTTP."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", target, "--source", "functions/main.py",
             "--signature-type", signature, "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(f"functions-framework exited:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.1)  # nothing to await: the port opens when the server binds
    proc.kill()
    raise RuntimeError("functions-framework did not start")
