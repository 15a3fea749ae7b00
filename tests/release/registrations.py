"""Versions registered straight into the store with their ``model.registered`` event, as intake would leave them,
for tests of what happens after intake."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from release import registry
from release.db import session_scope
from release.ports import EventBus
from schemas.events import EventType, ModelRegisteredData, Topic, make_event


def register_version(engine: Engine, bus: EventBus, version: str, model: str = "digits",
                     policy: dict[str, Any] | None = None) -> None:
    """Register ``model``/``version`` and publish its registration in the same transaction."""
    with session_scope(engine) as s:
        outcome = registry.register_version(s, model=model, version=version, digest=f"sha256:{version}",
                                            artifact_uri=f"file:///b/models/{model}/{version}/",
                                            format="torchscript", manifest={}, policy=policy or {})
        data = ModelRegisteredData(model=model, version=version, version_id=outcome.version.id,
                                   digest=f"sha256:{version}", artifact_uri="x", format="torchscript")
        bus.publish(make_event(EventType.MODEL_REGISTERED, data, event_id=f"reg-{version}"),
                    topic=Topic.MODEL_EVENTS, session=s)
