"""Binary-tensor OIP and TorchServe-style ``/predictions`` requests reach drift windows on the embedded default.

One version goes LIVE through the whole flow; 600 single-row requests of each kind then go through the real
router, whose prediction logger publishes to ``prediction-logs``; a drift monitor consumer is drained as
``release up`` runs it, and ``release drift NAME --json`` must count every one of those rows in its windows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from release.bootstrap import App
from tests.e2e.test_drift_rollback import monitor_consumer
from tests.e2e.test_embedded_flow import (
    FAST,
    HELD,
    MODEL,
    RouterProcess,
    X,
    bucket_of,
    cli_json,
    drain,
    drop,
    embedded_app,
    merged,
    prod,
    put_policy,
    serving_router,
    trained,
)
from tests.release.test_router_request_kinds import binary_request

pytestmark = pytest.mark.slow

REQUESTS = 600
#: Windows of 100 rows, so each kind fills whole windows and none waits for its age to close.
DRIFT = {"drift": {"window_size": 100, "min_samples": 50}}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """A fresh embedded app for one test."""
    with embedded_app(tmp_path / "home", monkeypatch) as application:
        yield application


def _drift_samples(capsys: pytest.CaptureFixture[str]) -> int:
    report = cli_json(capsys, "drift", MODEL, "--limit", "1000")
    return sum(int(w["samples"]) for w in report["windows"] if w["version"] == "1")


def wait_published(router: RouterProcess, want: int) -> None:
    deadline = time.monotonic() + 60
    while router.logger.published < want:  # the logger publishes off the request path
        assert time.monotonic() < deadline, f"only {router.logger.published} prediction records published"
        time.sleep(0.05)


def test_binary_oip_and_predictions_requests_reach_drift_windows(app: App,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """600 binary OIP requests, then 600 /predictions requests, each land as 600 rows in `release drift`."""
    put_policy(app, merged(FAST, DRIFT))
    drop(bucket_of(app), "1", trained("baseline"))
    drain(app)
    assert prod(app) == "1"
    monitor = monitor_consumer(app)
    rows = X[HELD][np.arange(REQUESTS) % len(HELD)].astype(np.float32)  # 597 held-out rows, reused round

    with serving_router(app) as router, httpx.Client(base_url=router.url, timeout=30) as client:
        for row in rows:
            body, headers = binary_request(row[None, :])
            response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
            assert response.status_code == 200, response.text
        wait_published(router, REQUESTS)
        drain(app, monitor)
        assert _drift_samples(capsys) == REQUESTS

        for row in rows:
            response = client.post(f"/predictions/{MODEL}", json=row.tolist())
            assert response.status_code == 200, response.text
        wait_published(router, 2 * REQUESTS)
        drain(app, monitor)

    assert _drift_samples(capsys) == 2 * REQUESTS
