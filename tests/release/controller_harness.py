"""A controller process for the crash tests: real SQLite store and local bus, fakes for the serving side.

Run as ``python -m tests.release.controller_harness DB_URL [CRASH_POINT]``; prints the end state as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime

from release import registry
from release.adapters.local_bus import LocalEventBus
from release.controller import Controller
from release.db import make_engine, migrate, session_factory, session_scope
from release.logconfig import configure_logging
from release.ports import SubscriptionSpec
from release.testing import FakeServing, ScriptedGates, ScriptedPromoter
from release.worker import Consumer, run_until_idle
from schemas.events import Topic
from schemas.tables import utcnow


def build(url: str, crash_at: str = "", *, failing: set[str] | None = None,
          broken: set[str] | None = None, aborting: set[str] | None = None,
          serving: FakeServing | None = None, clock: Callable[[], datetime] = utcnow, max_rollouts: int = 4):
    """Controller, bus and consumer over ``url`` with scripted fakes."""
    engine = make_engine(url)
    migrate(engine)
    bus = LocalEventBus(session_factory=session_factory(engine))
    bus.ensure_subscription(SubscriptionSpec(name="controller", topic=Topic.MODEL_EVENTS, max_attempts=10))
    controller = Controller(engine=engine, bus=bus, serving=serving or FakeServing(broken=broken or set()),
                            gates=ScriptedGates(failing=failing or set()),
                            promoter=ScriptedPromoter(aborting=aborting or set()),
                            materialize=lambda _v: None, crash_at=crash_at, clock=clock,
                            max_rollouts=max_rollouts)
    consumer = Consumer(bus=bus, subscription="controller", handler=controller.handle)
    return engine, bus, controller, consumer


def end_state(engine) -> dict:  # type: ignore[no-untyped-def]
    """States of every version and where the aliases point."""
    with session_scope(engine) as s:
        out: dict = {}
        for m in registry.list_models(s):
            out[m.name] = {"versions": {v.version: str(v.state) for v in registry.list_versions(s, m.name)},
                           "aliases": {a.name: a.version for a in registry.list_aliases(s, m.name)}}
        return out


def main() -> None:
    configure_logging(fmt="json", level="WARNING")
    url = sys.argv[1]
    crash_at = sys.argv[2] if len(sys.argv) > 2 else ""
    engine, bus, controller, consumer = build(url, crash_at, failing={"bad"})
    for model, version in controller.resume_all():
        controller.reconcile(model, version)
    run_until_idle([consumer], bus=bus)
    print(json.dumps(end_state(engine), sort_keys=True))


if __name__ == "__main__":
    main()
