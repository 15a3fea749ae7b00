"""One local pod process as the local serving backend tracks it, and the process helpers it needs.

A replica is either started by this control plane (``process``) or adopted from a previous run (``pid`` only, with
the same command line); ``command`` is how it is (re)started, ``cmdline`` what the process runs when that differs
(a warm spare that was handed the command on stdin); ``folder`` is the pod's own sandbox folder, removed when the
replica is retired.
"""

from __future__ import annotations

import socket
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

LOG_EXCERPT_LINES = 40


def free_port(host: str) -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if "\nState:\tZ" in status:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def tail(path: Path, lines: int = LOG_EXCERPT_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    try:
        with path.open("r", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


@dataclass(kw_only=True)
class Replica:
    """One pod process: ours (``process``) or adopted from a previous run (``pid`` only)."""

    index: int
    port: int
    log_path: Path
    command: list[str]
    folder: Path | None = None
    pid: int = 0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float | None = None
    exit_code: int | None = None
    gave_up: bool = False
    cmdline: list[str] | None = None

    def alive(self) -> bool:
        """True while the process runs."""
        if self.process is not None:
            return self.process.poll() is None
        return pid_cmdline(self.pid) == (self.cmdline or self.command)

    def reap(self) -> int | None:
        """The exit code once the process ended (unknown, -1, for an adopted process)."""
        if self.process is not None:
            return self.process.poll()
        return None if self.alive() else -1
