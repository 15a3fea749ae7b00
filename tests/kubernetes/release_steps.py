"""The registry changes a release makes, each with the event the controller publishes in the same transaction.

The controller and promoter (``release.controller``, ``release.promotion``) write these: a canary weight and its
``canary.step``, an alias move and its ``alias.moved``, a rollback and its ``release.rolled_back``. Tests of
the Gateway route sync replay them against a real database and bus, so the sync sees what it sees in production.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from release import registry
from release.db import session_scope
from release.ports import EventBus
from schemas.events import AliasMovedData, CanaryStepData, EventType, RolledBackData, Topic, make_event


def register(engine: Engine, model: str, *versions: str) -> None:
    """Register ``versions`` of ``model`` from a gs:// bucket."""
    with session_scope(engine) as s:
        for version in versions:
            registry.register_version(s, model=model, version=version, digest="sha256:" + version[-1] * 64,
                                      artifact_uri=f"gs://models-bkt/models/{model}/{version}",
                                      format="state_dict", manifest={})


def move(engine: Engine, bus: EventBus | None, model: str, alias: str, version: str | None, *,
         clear_canary: bool = False, rolled_back_from: str | None = None) -> None:
    """Point ``alias`` at ``version``; with ``clear_canary`` drop the canary weights (a promotion or rollback)."""
    with session_scope(engine) as s:
        moved, previous = registry.move_alias(s, model=model, alias=alias, version=version, expected_revision=None,
                                              actor="controller", reason="test")
        if clear_canary:
            registry.clear_routes(s, model)
        if bus is None:
            return
        bus.publish(make_event(EventType.ALIAS_MOVED, AliasMovedData(
            model=model, alias=alias, version=version, previous_version=previous, revision=moved.revision,
            actor="controller", reason="test")), topic=Topic.MODEL_EVENTS, session=s)
        if rolled_back_from is not None:
            bus.publish(make_event(EventType.RELEASE_ROLLED_BACK, RolledBackData(
                model=model, version=rolled_back_from, restored_version=version, actor="controller",
                reason="test")), topic=Topic.MODEL_EVENTS, session=s)


def canary(engine: Engine, bus: EventBus | None, model: str, version: str, weight: int, *, step: int = 0) -> None:
    """Send ``weight`` percent of PROD's traffic to ``version``, as a canary step starts."""
    with session_scope(engine) as s:
        registry.set_route_weight(s, model=model, version=version, weight=weight)
        if bus is not None:
            bus.publish(make_event(EventType.CANARY_STEP, CanaryStepData(
                model=model, version=version, step=step, weight=weight, phase="started")),
                topic=Topic.MODEL_EVENTS, session=s)
