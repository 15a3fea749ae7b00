"""Drift end to end on the embedded default (issue 5): served predictions drift, PROD rolls back by itself.

Two real versions go LIVE through the whole flow; brightened digits are then sent through the real router,
whose prediction logger publishes to ``prediction-logs``. A ``DriftMonitor`` consumer and the controller
consumer are drained together, as ``release up`` runs them: the monitor measures windows against the
reference sample shipped in the manifest, raises a critical alert and asks for a rollback, and the
controller puts PROD back on the previous version. Everything is checked in the journal and the CLI output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from monitoring.monitor import MONITOR_SUBSCRIPTION, DriftMonitor, subscriptions
from release.bootstrap import App
from release.worker import Consumer
from schemas.states import VersionState
from tests.e2e.test_embedded_flow import (
    FAST,
    HELD,
    MODEL,
    X,
    bucket_of,
    cli_json,
    drain,
    drop,
    embedded_app,
    infer_body,
    merged,
    prod,
    put_policy,
    serving_router,
    trained,
    version,
)

pytestmark = pytest.mark.slow

#: Small windows so that a few hundred requests make several; two critical windows in a row roll back.
DRIFT = {"drift": {"window_size": 100, "min_samples": 50, "consecutive_windows": 2, "rollback_on_critical": True}}
ROWS_PER_REQUEST = 25
SHIFTED_ROWS = 300  # three windows


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """A fresh embedded app for one test."""
    with embedded_app(tmp_path / "home", monkeypatch) as application:
        yield application


def monitor_consumer(app: App) -> Consumer:
    """A drift monitor on the app's store and bus, subscribed to prediction-logs, behind a consumer."""
    for spec in subscriptions():
        app.bus.ensure_subscription(spec)
    monitor = DriftMonitor(engine=app.engine, bus=app.bus, store=app.store,
                           cache_dir=app.settings.home / "monitor-cache")
    return Consumer(bus=app.bus, subscription=MONITOR_SUBSCRIPTION, handler=monitor.handle)


def test_brightened_traffic_alerts_and_rolls_prod_back(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    """Brightened digits on PROD v2 give drift.measured, a critical drift.alert and a rollback to v1, all journalled."""
    bucket = bucket_of(app)
    put_policy(app, merged(FAST, DRIFT))
    drop(bucket, "1", trained("baseline"))
    drain(app)
    drop(bucket, "2", trained("better"))
    drain(app)
    assert prod(app) == "2" and version(app, "1").state is VersionState.LIVE
    monitor = monitor_consumer(app)
    shifted = np.clip(X[HELD][:SHIFTED_ROWS] + 0.3, 0.0, 1.0).astype(np.float32)

    with serving_router(app) as router, httpx.Client(base_url=router.url, timeout=30) as client:
        for start in range(0, SHIFTED_ROWS, ROWS_PER_REQUEST):
            response = client.post(f"/v2/models/{MODEL}/infer",
                                   json=infer_body(shifted[start:start + ROWS_PER_REQUEST]))
            assert response.status_code == 200 and response.headers["x-model-version"] == "2"
        deadline = time.monotonic() + 20
        while router.logger.published < SHIFTED_ROWS:  # the logger publishes off the request path
            assert time.monotonic() < deadline, f"only {router.logger.published} prediction records published"
            time.sleep(0.05)

        drain(app, monitor)

        assert prod(app) == "1"
        v2 = version(app, "2")
        assert v2.state is VersionState.ROLLED_BACK, v2.state_reason
        assert "drift" in (v2.state_reason or "")
        after = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(shifted[:1]))
        assert after.status_code == 200 and after.headers["x-model-version"] == "1"

    events = cli_json(capsys, "events", "--limit", "100000")
    seen = [(e["type"].removeprefix("dev.modelrelease.").removesuffix(".v1"), e.get("data", {})) for e in events]
    types = [t for t, _ in seen]
    measured = [d for t, d in seen if t == "drift.measured" and d["window"]["version"] == "2"]
    alerts = [d for t, d in seen if t == "drift.alert"]
    assert len(measured) >= 2
    assert alerts and alerts[0]["severity"] == "critical" and alerts[0]["version"] == "2"
    assert alerts[0]["rollback_requested"] is True
    assert types.index("drift.alert") < types.index("release.rollback_requested") < types.index("release.rolled_back")
    rolled_back = next(d for t, d in seen if t == "release.rolled_back")
    assert (rolled_back["version"], rolled_back["restored_version"], rolled_back["actor"]) == ("2", "1",
                                                                                           "drift-monitor")
    aliases = cli_json(capsys, "aliases", MODEL)
    assert {a["name"]: a["version"] for a in aliases}["PROD"] == "1"
