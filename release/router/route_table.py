"""The route table: where a request for (model, ref) goes, resolved from the registry and cached briefly.

``ref`` is a version or an alias. A resolution is cached for at most ``ttl_s`` (the router's staleness bound);
``invalidate`` drops it at once when an ``alias.moved`` event is seen in-process. PROD carries the canary splits
of the model's route weights. The clock is injected so that the staleness bound can be tested without waiting.

``cached`` answers from memory only and never blocks, so the router calls it on its event loop; ``lookup`` may
query the registry, so the router runs it in a worker thread, and only when ``cached`` had nothing fresh.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from release import registry
from release.db import session_scope
from schemas.errors import NotFound, Reason
from schemas.manifest import TensorSpec

PROD = registry.PROD


@dataclass(frozen=True)
class Target:
    """Where a request for (model, ref) goes: the version and its pods, plus canary splits for PROD."""

    model: str
    version: str
    endpoints: tuple[str, ...]
    canaries: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    sample_rate: float = 1.0
    resolved_at: float = 0.0
    declared: tuple[TensorSpec, ...] = ()
    """The version's declared inputs (its manifest's), so ``/predictions`` bodies can be logged as rows."""

    def pick(self, rng: random.Random) -> tuple[str, tuple[str, ...]]:
        """The version and pods for one request, honouring canary weights."""
        roll = rng.uniform(0, 100)
        for version, endpoints, weight in self.canaries:
            if roll < weight and endpoints:
                return version, endpoints
            roll -= weight
        return self.version, self.endpoints


class RouteTable:
    """alias -> version -> pods, cached with a bounded staleness."""

    def __init__(self, *, engine: Engine, ttl_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], Target] = {}
        self._lock = threading.Lock()

    @property
    def ttl_s(self) -> float:
        """The longest a resolution is served from cache: the bound on how stale a route can be."""
        return self._ttl_s

    def invalidate(self, model: str | None = None) -> None:
        """Forget cached routes (of one model, or all)."""
        with self._lock:
            for key in [k for k in self._cache if model is None or k[0] == model]:
                del self._cache[key]

    def cached(self, model: str, ref: str) -> Target | None:
        """The cached target for ``ref`` while it is fresh, else None; never touches the registry."""
        cached = self._cache.get((model, ref))
        if cached is not None and self._clock() - cached.resolved_at < self._ttl_s:
            return cached
        return None

    def lookup(self, model: str, ref: str) -> Target:
        """The target for ``ref`` (a version or alias), from cache when fresh enough."""
        cached = self.cached(model, ref)
        if cached is not None:
            return cached
        target = self._resolve(model, ref, self._clock())
        with self._lock:
            self._cache[(model, ref)] = target
        return target

    def _resolve(self, model: str, ref: str, now: float) -> Target:
        with session_scope(self._engine) as s:
            view = registry.resolve(s, model, ref)
            endpoints = self._endpoints(s, view.id)
            canaries: list[tuple[str, tuple[str, ...], int]] = []
            if ref == PROD:
                for version, weight in registry.route_weights(s, model).items():
                    if version != view.version:
                        other = registry.get_version(s, model, version)
                        canaries.append((version, self._endpoints(s, other.id), weight))
            rate = float(view.policy.get("drift", {}).get("sample_rate", 1.0))
            declared = _declared_inputs(view.manifest)
        if not endpoints and not canaries:
            raise NotFound(f"{model}/{view.version} has no ready pods", reason=Reason.NOT_READY,
                           hint="The version is not being served; see `release show NAME VERSION`.")
        return Target(model=model, version=view.version, endpoints=endpoints, canaries=tuple(canaries),
                      sample_rate=rate, resolved_at=now, declared=declared)

    @staticmethod
    def _endpoints(session: Any, version_id: int) -> tuple[str, ...]:
        deployment = registry.get_deployment(session, version_id)
        if deployment is None or deployment.status != "ready":
            return ()
        return tuple(deployment.endpoints)


def _declared_inputs(manifest: dict[str, Any]) -> tuple[TensorSpec, ...]:
    """The manifest's input specs; none when it has none (a ``.mar``) or they do not parse."""
    try:
        return tuple(TensorSpec.model_validate(spec) for spec in manifest.get("inputs") or ())
    except (ValidationError, TypeError):
        return ()
