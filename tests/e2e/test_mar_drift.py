"""A ``.mar`` whose extra files carry ``reference.npz`` gets a drift profile at registration, and drift windows.

A real torch-model-archiver archive goes LIVE through the embedded flow while the monitor's ``drift-profiles``
consumer runs as ``release up`` runs it; its profile must be stored from the archive's reference sample before a
single prediction, and ``/predictions`` requests through the real router must then fill ``release drift`` windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from monitoring.monitor import PROFILE_SUBSCRIPTION, DriftMonitor
from release import registry
from release.bootstrap import App
from release.db import session_scope
from release.worker import Consumer
from tests.artifacts import npz_bytes
from tests.e2e.test_drift_request_kinds import DRIFT, wait_published
from tests.e2e.test_drift_rollback import monitor_consumer
from tests.e2e.test_embedded_flow import (
    FAST,
    HELD,
    MODEL,
    TRAIN,
    X,
    Y,
    bucket_of,
    cli_json,
    drain,
    embedded_app,
    merged,
    prod,
    put_policy,
    serving_router,
    trained,
)
from tests.marfiles import build_mar

pytestmark = pytest.mark.slow

REQUESTS = 200


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """A fresh embedded app for one test."""
    with embedded_app(tmp_path / "home", monkeypatch) as application:
        yield application


def test_a_mar_with_a_reference_sample_is_profiled_and_monitored(app: App, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The .mar's reference.npz becomes its profile at registration; its /predictions traffic fills windows."""
    put_policy(app, merged(FAST, DRIFT))
    monitor = monitor_consumer(app)  # subscribes drift-monitor and drift-profiles before anything is registered
    profiler = DriftMonitor(engine=app.engine, bus=app.bus, store=app.store, cache_dir=app.settings.home / "profiles")
    profiles = Consumer(bus=app.bus, subscription=PROFILE_SUBSCRIPTION, handler=profiler.handle_registration)
    mar = build_mar(tmp_path, name=MODEL, version="1", serialized=trained("baseline"),
                    extra={"eval.npz": npz_bytes(x=X[HELD], y=Y[HELD]), "reference.npz": npz_bytes(x=X[TRAIN][:500])})
    (bucket_of(app) / "models" / MODEL).mkdir(parents=True, exist_ok=True)
    mar.rename(bucket_of(app) / "models" / MODEL / "1.mar")
    drain(app, profiles)
    assert prod(app) == "1"
    with session_scope(app.engine) as s:
        profile = registry.get_reference_profile(s, model=MODEL, version="1")
    assert profile is not None and profile["n_reference"] == 500 and len(profile["feature_names"]) == X.shape[1]

    rows = X[HELD][np.arange(REQUESTS) % len(HELD)].astype(np.float32)
    with serving_router(app) as router, httpx.Client(base_url=router.url, timeout=30) as client:
        for row in rows:
            response = client.post(f"/predictions/{MODEL}", json=row.tolist())
            assert response.status_code == 200, response.text
        wait_published(router, REQUESTS)
        drain(app, monitor)

    report = cli_json(capsys, "drift", MODEL, "--limit", "1000")
    windows = [w for w in report["windows"] if w["version"] == "1"]
    assert sum(int(w["samples"]) for w in windows) == REQUESTS and len(windows) == REQUESTS // 100
