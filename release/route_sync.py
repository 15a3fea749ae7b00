"""Gateway route sync: keep a cluster's per-alias routes level with the registry (Kubernetes serving only).

With Gateway routing (``RELEASE_GATEWAY``) traffic reaches the pods without the Python router, so the split that
the router reads from the registry (aliases, canary route weights) must be written into the cluster instead.
``desired_routes`` reads it: one ``AliasRoute`` per alias that points at a version, PROD carrying the canary
weights of ``registry.route_weights``. ``RouteSync`` hands that whole set to a ``RouteWriter`` (the Kubernetes
adapter ``release.adapters.gateway_routes`` applies HTTPRoutes), which makes the cluster match it and deletes the
routes of aliases that no longer exist.

It is level-triggered: an event only says *which model* to look at again, and the sync reads the registry as it is
now. Duplicated, late or reordered events therefore converge to the same routes; the periodic ``sync_all`` mends
anything an event never reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine
from sqlmodel import Session

from release import registry
from release.db import session_scope
from schemas.events import CloudEvent, EventType

log = structlog.get_logger(__name__)

#: Events after which a model's routes may differ: an alias moved, a canary weight changed, a rollback.
ROUTE_EVENTS = frozenset({EventType.ALIAS_MOVED, EventType.CANARY_STEP, EventType.RELEASE_ROLLED_BACK})
ROUTE_SUBSCRIPTION = "gateway-routes"


@dataclass(frozen=True)
class Backend:
    """A version taking ``weight`` parts of an alias's traffic (weights of one route sum to 100)."""

    version: str
    weight: int


@dataclass(frozen=True)
class AliasRoute:
    """Where the requests for one alias of a model go."""

    model: str
    alias: str
    backends: tuple[Backend, ...]


class RouteWriter(Protocol):
    """Makes a cluster's routes for one model exactly ``routes``: applies them, deletes any others."""

    def apply(self, model: str, routes: Sequence[AliasRoute]) -> None:
        """Converge the model's routes; idempotent."""
        ...


def prod_backends(stable: str, weights: dict[str, int]) -> tuple[Backend, ...]:
    """PROD's backends: each canary at its weight, the stable version at the rest (0 while a canary has all).

    Weights above 100 in total (never written by the promoter, but a hand-edited registry could hold them) are
    cut back in version order, so the route stays valid rather than failing to apply.
    """
    canaries: list[Backend] = []
    left = 100
    for version, weight in sorted(weights.items()):
        if version == stable or weight <= 0:
            continue
        share = min(weight, left)
        canaries.append(Backend(version=version, weight=share))
        left -= share
    return (Backend(version=stable, weight=left), *canaries)


def desired_routes(session: Session, model: str) -> list[AliasRoute]:
    """One route per alias of ``model`` that points at a version, by alias name."""
    routes = []
    for alias in registry.list_aliases(session, model):
        if alias.version is None:
            continue
        if alias.name == registry.PROD:
            backends = prod_backends(alias.version, registry.route_weights(session, model))
        else:
            backends = (Backend(version=alias.version, weight=100),)
        routes.append(AliasRoute(model=model, alias=alias.name, backends=backends))
    return routes


class RouteSync:
    """Reads the registry's routes of a model and has the writer apply them."""

    def __init__(self, *, engine: Engine, writer: RouteWriter, registry: CollectorRegistry | None = None) -> None:
        self._engine = engine
        self._writer = writer
        self._syncs = Counter("gateway_route_syncs", "Route syncs of a model by outcome (applied, failed)",
                              ["outcome"], registry=registry if registry is not None else CollectorRegistry())

    def sync(self, model: str) -> list[AliasRoute]:
        """Apply the model's current routes; returns them."""
        with session_scope(self._engine) as session:
            routes = desired_routes(session, model)
        try:
            self._writer.apply(model, routes)
        except Exception:
            self._syncs.labels("failed").inc()
            raise
        self._syncs.labels("applied").inc()
        log.info("routes.synced", model=model,
                 routes={r.alias: {b.version: b.weight for b in r.backends} for r in routes})
        return routes

    def sync_all(self) -> int:
        """Sync every registered model (at start and periodically); returns how many."""
        with session_scope(self._engine) as session:
            models = [m.name for m in registry.list_models(session)]
        for model in models:
            self.sync(model)
        return len(models)

    def handle(self, event: CloudEvent) -> None:
        """The consumer's handler: sync the event's model after a route event; ignore every other event."""
        if event.type in ROUTE_EVENTS and event.model is not None:
            self.sync(event.model)
