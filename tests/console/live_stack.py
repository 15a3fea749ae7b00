"""A real embedded stack for the browser tests: ``release up``'s ``all`` role served on loopback, with real pods.

It starts the threads and web app exactly as ``release up`` does (``app.stack.start_stack``), drops three digits
versions into the bucket folder as an uploader would (a baseline, a better one, a regressed one whose
description holds HTML), and waits until the flow has settled them: v1 LIVE, v2 LIVE as PROD, v3 REJECTED.
Models and helpers come from the embedded end-to-end tests, so both suites build the demo's models the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.stack import start_stack
from release import policies
from release.bootstrap import App
from release.db import session_scope
from tests.artifacts import manifest_for, npz_bytes, write_artifact
from tests.console.conftest import TOKEN
from tests.console.seed import HOSTILE
from tests.e2e.test_embedded_flow import FAST, HELD, MODEL, TRAIN, X, Y, embedded_app, infer_body, merged, trained
from tests.servers.in_thread import serve_in_thread

#: Small drift windows, one critical window raises the alert; no automatic rollback (the test clicks it).
DRIFT = {"drift": {"window_size": 100, "min_samples": 50, "consecutive_windows": 1, "rollback_on_critical": False}}


@dataclass
class Live:
    """The running stack: its base URL and the app behind it."""

    url: str
    app: App

    def get(self, path: str, **params: Any) -> Any:
        """GET a read route and return its JSON."""
        response = httpx.get(self.url + path, params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def prod(self) -> str | None:
        """Where PROD points, through the read API."""
        aliases = self.get(f"/api/v1/models/{MODEL}")["aliases"]
        return next((a["version"] for a in aliases if a["name"] == "PROD"), None)

    def state(self, version: str) -> str:
        """A version's state, through the read API."""
        return str(self.get(f"/api/v1/models/{MODEL}/versions/{version}")["state"])

    def wait(self, check: Any, *, what: str, timeout_s: float = 240.0) -> None:
        """Block until ``check()`` is true (the flow runs in the stack's threads)."""
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.25)

    def send_drifted_traffic(self, rows: int = 300, per_request: int = 25) -> None:
        """Predictions on raw 0..16 pixels (the models expect 0..1) through the router: clear input drift."""
        drifted = (X[HELD][:rows] * 16.0).astype(np.float32)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for start in range(0, rows, per_request):
                answer = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(drifted[start:start + per_request]))
                assert answer.status_code == 200, answer.text


def drop(bucket: Path, version: str, kind: str, *, description: str) -> None:
    """Upload a digits version with a description (what uploaders write, shown on the page as text)."""
    files = {"model.pt": trained(kind), "eval.npz": npz_bytes(x=X[HELD], y=Y[HELD]),
             "reference.npz": npz_bytes(x=X[TRAIN][:500], y=Y[TRAIN][:500])}
    write_artifact(bucket, MODEL, version, files,
                   manifest_for(MODEL, version, files, eval="eval.npz", reference="reference.npz",
                                description=description))


@contextmanager
def live_stack(home: Path) -> Iterator[Live]:
    """The stack up with v1 LIVE, v2 PROD and v3 REJECTED; everything stopped afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELEASE_API_TOKEN", TOKEN)
        mp.setenv("RELEASE_POLL_INTERVAL_S", "0.2")
        with embedded_app(home, mp) as application:
            with session_scope(application.engine) as s:
                policy = policies.parse_policy(merged(FAST, DRIFT), webhook_prefixes=())
                policies.set_policy(s, model=MODEL, policy=policy, actor="test", reason="browser tests")
            stack = start_stack(application, role="all")
            try:
                with serve_in_thread(stack.web, name="console") as url:
                    live = Live(url=url, app=application)
                    _settle(live)
                    yield live
            finally:
                stack.close()


def _settle(live: Live) -> None:
    bucket = Path(live.app.settings.bucket_location)
    plan = [("1", "baseline", "baseline: 16 hidden units", "LIVE"),
            ("2", "better", "better: 64 hidden units, longer training", "LIVE"),
            ("3", "regressed", HOSTILE, "REJECTED")]
    for version, kind, description, settled in plan:
        drop(bucket, version, kind, description=description)
        live.wait(lambda v=version, s=settled: _state_or_none(live, v) == s, what=f"v{version} {settled}")
    live.wait(lambda: live.prod() == "2", what="PROD on v2")


def _state_or_none(live: Live, version: str) -> str | None:
    try:
        return live.state(version)
    except httpx.HTTPStatusError:
        return None
