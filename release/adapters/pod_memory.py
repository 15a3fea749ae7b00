"""Admission of local pods against a memory budget: each pod is a whole torch process, so count bytes, not pods.

The budget (``RELEASE_POD_MEMORY_MB``; 0 = half of this machine's memory) covers the resident memory of every pod
process tree the backend runs (a pod with ``--http-workers N`` forks fronts) and of its warm spares. A new pod is
expected to need as much as the largest one running, and at least ``DEFAULT_POD_MB``; a deployment that
does not fit is refused with a ``TemporaryError`` (``capacity``), so the controller retries it once others retire.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from schemas.errors import Reason, TemporaryError

#: What one pod is expected to hold before any runs to measure: a CPU torch process with a small model.
DEFAULT_POD_MB = 400
MB = 1 << 20
RETRY_DELAY_S = 5.0


def machine_memory_mb() -> int:
    """This machine's physical memory in MiB."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MB)


def default_budget_mb() -> int:
    """Half of the machine's memory: the rest is the control plane's, the database's and the system's."""
    return machine_memory_mb() // 2


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
        tree[ppid].append(int(entry.name))
    return tree


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def tree_rss(pids: Iterable[int]) -> list[int]:
    """The resident bytes of each process with all its descendants (0 for one that is gone)."""
    children = _children()
    sizes = []
    for root in pids:
        total, stack = 0, [root]
        while stack:
            pid = stack.pop()
            total += _rss(pid)
            stack.extend(children.get(pid, ()))
        sizes.append(total)
    return sizes


class MemoryBudget:
    """Admits a deployment of ``replicas`` pods when they fit beside what runs now."""

    def __init__(self, budget_mb: int = 0) -> None:
        self.budget_mb = budget_mb or default_budget_mb()

    def fits(self, replicas: int, *, running: Iterable[int]) -> bool:
        """True when ``replicas`` more pods fit beside the ``running`` ones."""
        return self._need(replicas, running)[2]

    def admit(self, *, model: str, version: str, replicas: int, running: Iterable[int]) -> None:
        """Raise ``TemporaryError`` (``capacity``) unless ``replicas`` more pods fit beside ``running`` ones."""
        used, needed, fits = self._need(replicas, running)
        if fits:
            return
        raise TemporaryError(
            f"{model}:{version} needs about {needed // MB} MiB for {replicas} pod(s); local pods hold "
            f"{used // MB} MiB of the {self.budget_mb} MiB budget", reason=Reason.CAPACITY, delay=RETRY_DELAY_S,
            hint="Nothing to do: it is deployed once other versions retire. Raise RELEASE_POD_MEMORY_MB if the "
                 "machine has room.")

    def _need(self, replicas: int, running: Iterable[int]) -> tuple[int, int, bool]:
        sizes = tree_rss(running)
        used, needed = sum(sizes), replicas * max([*sizes, DEFAULT_POD_MB * MB])
        return used, needed, used + needed <= self.budget_mb * MB
