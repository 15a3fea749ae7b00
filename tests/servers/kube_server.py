"""A Kubernetes API served over real HTTP by kmock, for the official ``kubernetes`` client to talk to.

kmock is asyncio; the client is blocking. The emulator therefore runs its own event loop in a thread, and
tests reach it only through HTTP or through ``KubeServer.configure``, which runs a change inside that loop.
What kmock does not do, tests do themselves: it keeps no status (tests patch it in), ignores label and field
selectors, and answers an apply-patch for a missing object with 404 (the backend then creates).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kmock

#: The kinds the serving backend and the Gateway route sync manage (and the pods tests look at).
RESOURCES = (
    "apps/v1/deployments",
    "v1/services",
    "v1/pods",
    "autoscaling/v2/horizontalpodautoscalers",
    "monitoring.googleapis.com/v1/podmonitorings",
    "gateway.networking.k8s.io/v1/httproutes",
    "networking.gke.io/v1/healthcheckpolicies",
)


@dataclass
class KubeServer:
    """The running emulator: its URL, and a way to change its reactions from the test's thread."""

    url: str
    emulator: kmock.KubernetesEmulator
    loop: asyncio.AbstractEventLoop

    def configure(self, change: Callable[[kmock.KubernetesEmulator], Any]) -> None:
        """Run ``change(emulator)`` inside the emulator's loop, so no request sees it half done."""

        async def run() -> None:
            change(self.emulator)

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=5)

    def requests(self) -> list[kmock.Request]:
        """Every request the emulator has received so far."""
        return list(self.emulator)


@contextmanager
def running_kube(resources: tuple[str, ...] = RESOURCES) -> Iterator[KubeServer]:
    """A fresh emulated API server on 127.0.0.1 knowing ``resources``, stopped on exit."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for resource in resources:
                emulator.resources[resource] = kmock.ResourceInfo()
            box["server"] = KubeServer(url=str(server.url).rstrip("/"), emulator=emulator,
                                       loop=asyncio.get_running_loop())
            box["stop"] = stop
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="kmock", daemon=True)
    thread.start()
    assert started.wait(timeout=10), "kmock did not start"
    server: KubeServer = box["server"]
    try:
        yield server
    finally:
        server.loop.call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=10)
