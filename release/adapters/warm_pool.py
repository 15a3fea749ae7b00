"""Spare local pods, started before any version needs them: torch and the handlers are imported, nothing loaded.

A spare is ``python -m handlers.server --warm``, started exactly like a cold pod (the sandbox's allow-listed
environment, its own empty folder, the pod account, a new session) with a pipe on stdin. ``take`` hands one to a
deployment, which copies its artifact into the spare's folder and writes the pod's real command line (artifact,
``--expect-digest``, serving settings) down the pipe; from then on it is that version's pod and nothing else.
``fill`` (the backend's supervisor calls it) replaces spares that were taken or died at once. When this process is
root (so it can undo it) a spare waits at a low CPU priority (nice ``SPARE_NICE``), so that a replacement's torch
import does not slow the pod just taken while it loads and its gates run; the taken pod gets the normal priority
back, every thread of it. Spares count against the pods' memory budget: one that does not fit is not started. A
spare whose control plane goes away reads end of file and exits, so spares never outlive the process that started
them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from release.adapters.local_replica import Replica
from release.adapters.pod_sandbox import PodUser, place_artifact

log = structlog.get_logger("release.adapters.warm_pool")

WARM_ARGS = ("-m", "handlers.server", "--warm")
SPARE_NICE = 10


@dataclass(kw_only=True)
class Spare:
    """One warm pod process waiting for its version."""

    folder: Path
    log_path: Path
    command: list[str]
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def start(self, argv: list[str]) -> None:
        """Give the spare its pod command line; it serves that and only that from now on."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(argv).encode() + b"\n")
        self.process.stdin.close()


#: How the backend starts a spare: (folder, log file, command) -> process, in the pod sandbox.
Starter = Callable[[Path, Path, list[str]], "subprocess.Popen[bytes]"]


class WarmPool:
    """Up to ``size`` spares under ``root`` (folders) and ``logs`` (their logs until a version takes them)."""

    def __init__(self, *, size: int, python: str, root: Path, logs: Path, start: Starter,
                 room: Callable[[], bool] = lambda: True) -> None:
        """``room()`` says whether the pods' memory budget has room for one more spare."""
        self.size = size
        self._room = room
        self.nice = SPARE_NICE if os.geteuid() == 0 else 0
        self.command = [python, *WARM_ARGS]
        self.root = root
        self.logs = logs
        self._start = start
        self._spares: list[Spare] = []

    def take(self) -> Spare | None:
        """A live spare, removed from the pool; None when there is none."""
        while self._spares:
            spare = self._spares.pop(0)
            if spare.alive():
                if self.nice:
                    renice(spare.process.pid, 0)
                return spare
            shutil.rmtree(spare.folder, ignore_errors=True)
        return None

    def fill(self) -> None:
        """Replace spares that died or were taken, up to ``size`` (and the memory budget)."""
        for spare in [s for s in self._spares if not s.alive()]:
            log.warning("warm_pool.spare_died", pid=spare.process.pid, exit_code=spare.process.returncode,
                        log_path=str(spare.log_path))
            self._spares.remove(spare)
            shutil.rmtree(spare.folder, ignore_errors=True)  # its log stays, for the warning above
        while len(self._spares) < self.size and self._room():
            name = f"spare-{uuid.uuid4().hex[:12]}"
            self.logs.mkdir(parents=True, exist_ok=True)
            folder, log_path = self.root / name, self.logs / f"{name}.log"
            process = self._start(folder, log_path, list(self.command))
            if self.nice:
                renice(process.pid, self.nice)
            self._spares.append(Spare(folder=folder, log_path=log_path, command=list(self.command),
                                      process=process))

    def pids(self) -> list[int]:
        """The spares' process ids (for memory accounting)."""
        return [spare.process.pid for spare in self._spares if spare.alive()]

    def close(self) -> None:
        """Let every spare go (end of its stdin) and remove its folder."""
        for spare in self._spares:
            with contextlib.suppress(OSError):
                if spare.process.stdin is not None:
                    spare.process.stdin.close()
        for spare in self._spares:
            try:
                spare.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                spare.process.kill()
                spare.process.wait(timeout=5)
            shutil.rmtree(spare.folder, ignore_errors=True)
            spare.log_path.unlink(missing_ok=True)
        self._spares.clear()


def renice(pid: int, nice: int) -> None:
    """Set the nice value of every thread of ``pid`` (Linux keeps one per thread; new threads inherit theirs)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def take_over(spare: Spare, *, index: int, port: int, log_path: Path, user: PodUser | None, artifact: Path,
              command: Callable[[Path], list[str]]) -> Replica:
    """Make ``spare`` replica ``index`` of a version: its artifact copied into the spare's own folder, its log moved
    under the version, and the pod command (``command(copy)``, the one a cold start would run) sent to it."""
    local = place_artifact(spare.folder, artifact=artifact, user=user)
    spare.log_path.replace(log_path)  # the process keeps writing to the same file, now under its version
    replica = Replica(index=index, port=port, log_path=log_path, folder=spare.folder, process=spare.process,
                      pid=spare.process.pid, command=command(local), cmdline=spare.command)
    spare.start(replica.command[len(WARM_ARGS):])  # what follows ``python -m handlers.server``
    log.info("warm_pool.spare_taken", pid=replica.pid, log_path=str(log_path))
    return replica
