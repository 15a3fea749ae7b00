"""What a scale run measures from outside: /proc of the control-plane processes and of the pods, and the database.

Control-plane CPU is user + system time of the role processes themselves (never their children: pods are
children of the controller). Pods are ``handlers.server`` processes with an artifact or their working folder under
the run's pod root (warm spares included); their RSS includes every process of their session. The sampler keeps
the last reading of a process that has gone, so a killed controller's CPU still counts.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields after the command name, which may hold spaces


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of ``pid`` alone, or None when it is gone."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (0 when gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _processes() -> list[tuple[int, int, str]]:
    """(pid, session id, command line) of every process we can read."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields is not None:
            out.append((pid, int(fields[3]), cmdline))
    return out


def _cwd_in(pid: int, root: str) -> bool:
    """Whether ``pid`` runs in a folder under ``root`` (a warm spare pod has no artifact on its command line yet)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(root)
    except OSError:
        return False


@dataclass
class Sampler:
    """Samples pods and control-plane processes every ``interval_s`` in a thread until ``stop``."""

    pod_root: Path
    interval_s: float = 0.5
    control: dict[str, int] = field(default_factory=dict)  # label -> pid, updated when a role restarts
    cpu: dict[int, float] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    peak_pods: int = 0
    peak_pod_rss: int = 0
    peak_control_rss: int = 0
    peak_farm_rss: int = 0
    pods_seen: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """One reading: control-plane CPU and RSS, pods at once and their RSS."""
        control_rss = 0
        for label, pid in list(self.control.items()):
            seconds = cpu_seconds(pid)
            if seconds is not None:
                self.cpu[pid] = seconds
                self.labels[pid] = label
                control_rss += rss_bytes(pid)
        self.peak_control_rss = max(self.peak_control_rss, control_rss)
        root = str(self.pod_root)
        procs = _processes()
        pods = {pid for pid, _sid, cmd in procs if "handlers.server" in cmd and (root in cmd or _cwd_in(pid, root))}
        self.pods_seen |= pods
        rss = sum(rss_bytes(pid) for pid, sid, _cmd in procs if pid in pods or sid in pods)
        self.peak_pods = max(self.peak_pods, len(pods))
        self.peak_pod_rss = max(self.peak_pod_rss, rss)
        farm = sum(rss_bytes(pid) for pid, _sid, cmd in procs if "farm.py serve" in cmd)
        self.peak_farm_rss = max(self.peak_farm_rss, farm)

    def control_cpu(self) -> dict[str, float]:
        """CPU seconds per role (summed over the processes a role had: restarts add up)."""
        out: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            out[self.labels[pid]] = out.get(self.labels[pid], 0.0) + seconds
        return out


def table_rows(engine: Engine) -> dict[str, int]:
    """Rows per table of the release store."""
    with engine.connect() as conn:
        return {t: int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                for t in sorted(inspect(conn).get_table_names())}


def database_bytes(engine: Engine, url: str) -> int:
    """Bytes the store takes: the SQLite file and its WAL, or the PostgreSQL database's size."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
