"""What an edge test holds of a router it attacks: its address, its metrics and what it logged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from release.router import PredictionLogger, RouterMetrics
from tests.release.router_testkit import RecordingBus, Upstream


@dataclass(frozen=True)
class EdgeRouter:
    """A router served over HTTP, with its metrics and the prediction records it logged."""

    url: str
    upstream: Upstream
    metrics: RouterMetrics
    logger: PredictionLogger
    bus: RecordingBus

    def logged(self) -> list[dict[str, Any]]:
        """Every prediction record the router has logged so far."""
        self.logger.flush()
        return self.bus.records()
