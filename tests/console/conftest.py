"""Fixtures of the console tests: a seeded app without pods for the read API, the OpenAPI fuzzing and the
page rendering; the browser tests build their own stack with real pods (``tests/console/live_stack.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from app.console import console_routes
from app.management_api import management_routes
from release.bootstrap import App, bootstrap
from release.settings import Settings
from tests.console.seed import seed

TOKEN = "console-test-token-0123456789"


def seeded_app(home: Path, **overrides: object) -> App:
    """An embedded app under ``home`` with the seeded registry (no pods, no threads)."""
    settings = Settings(home=home, log_format="console", log_level="WARNING", api_token=TOKEN, gpu="off",
                        console_stream_max_s=1.0, poll_interval_s=0.05, **overrides)  # type: ignore[arg-type]
    application = bootstrap(settings)
    application.ensure_subscriptions()
    seed(application.engine, application.bus)
    return application


def web_of(application: App) -> Starlette:
    """The API role's routes (writes, reads, stream, OpenAPI, pages) as one ASGI app."""
    return Starlette(routes=[*management_routes(application), *console_routes(application)])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """One seeded app per test module (reads never change it)."""
    application = seeded_app(tmp_path_factory.mktemp("console") / "home")
    try:
        yield application
    finally:
        application.close()


@pytest.fixture(scope="module")
def client(seeded: App) -> Iterator[TestClient]:
    """A test client of the seeded app's web routes."""
    with TestClient(web_of(seeded)) as test_client:
        yield test_client
