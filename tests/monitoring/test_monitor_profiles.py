"""The reference profile is built when a version is registered, from the same event the controller sees."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from monitoring.monitor import PROFILE_SUBSCRIPTION, DriftMonitor, subscriptions
from release import registry
from release.adapters.local_bus import LocalEventBus
from release.db import session_factory, session_scope
from release.testing import MemoryStore
from release.worker import Consumer, run_until_idle
from tests.monitoring.test_monitor import register


def test_model_registered_builds_and_stores_the_profile(sqlite_engine: Engine, tmp_path: Path) -> None:
    """A model.registered event on model-events leaves the version's reference profile stored."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    store = MemoryStore()
    for spec in subscriptions():
        bus.ensure_subscription(spec)
    monitor = DriftMonitor(engine=sqlite_engine, bus=bus, store=store, cache_dir=tmp_path / "artifacts")
    register(sqlite_engine, bus, store, "1", announce=True)
    with session_scope(sqlite_engine) as s:
        assert registry.get_reference_profile(s, model="digits", version="1") is None
    consumer = Consumer(bus=bus, subscription=PROFILE_SUBSCRIPTION, handler=monitor.handle_registration)
    assert run_until_idle([consumer], bus=bus) == 1
    with session_scope(sqlite_engine) as s:
        profile = registry.get_reference_profile(s, model="digits", version="1")
    assert profile is not None and profile["profile_version"] >= 1
