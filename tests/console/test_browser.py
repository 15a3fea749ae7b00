"""The dashboard in a real headless Chromium against a real stack (``release up``'s ``all`` role, real pods).

Used as a person would: open the page, read what it shows, click, and check the effect through the read API.
Every test saves a screenshot under ``build/screenshots/``. Needs Debian's ``/usr/bin/chromium`` (driven by
Playwright; no browser is ever downloaded): skipped with a message where it is absent, a failure in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import TOKEN
from tests.console.live_stack import Live, live_stack
from tests.console.seed import HOSTILE

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
MODEL_PAGE = "/ui/models/digits"


def _chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package (pip install -e '.[dev]')"
    else:
        if CHROMIUM.is_file():
            return str(CHROMIUM)
        missing = f"{CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"browser tests need {missing}; .ci/run installs it")
    pytest.skip(f"browser tests need {missing}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through Playwright."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def live(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The stack, settled: v1 LIVE, v2 PROD, v3 REJECTED."""
    with live_stack(tmp_path_factory.mktemp("browser") / "home") as running:
        yield running


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) at 1280 px."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live.url)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    try:
        yield opened
    finally:
        context.close()


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under build/screenshots/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def expect(locator: Any) -> Any:
    """Playwright's auto-waiting assertions."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_home_lists_models_with_prod_states_and_live_feed(page: Any, live: Live) -> None:
    """`/` lands on the home page: digits with PROD v2, its states, and the live feed connected over SSE."""
    page.goto("/")
    assert page.url.endswith("/ui/")
    row = page.locator("tr[data-model='digits']")
    expect(row.locator("td.prod")).to_contain_text("2")
    expect(row.locator("td.states")).to_contain_text("REJECTED")
    expect(row.locator("td.states")).to_contain_text("LIVE")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#feed li").first).to_be_visible()
    shot(page, "home")


def test_model_page_shows_states_and_gate_reports_beside_prod(page: Any, live: Live) -> None:
    """The model page shows each version's state and reason, and v3's gate report against PROD v2, failed."""
    page.goto(MODEL_PAGE)
    rejected = page.locator("tr.version-row[data-version='3']")
    expect(rejected).to_have_attribute("data-state", "REJECTED")
    expect(rejected.locator(".state")).to_have_text("REJECTED")
    report = page.locator("tr.gate-row[data-version='3']")
    expect(report).to_contain_text("against PROD 2")
    expect(report.locator("tr.fail").first).to_contain_text("FAIL")
    expect(page.locator("tr.version-row[data-version='2'] .badge")).to_have_text("PROD")
    expect(page.locator(".aliases [data-alias='PROD']")).to_have_text("PROD → 2")
    # The regressed version's description is HTML an uploader wrote: shown as text, never run.
    expect(rejected.locator("td.desc")).to_have_text(HOSTILE)
    assert page.evaluate("window.__pwned") is None
    assert live.get("/api/v1/models/digits/versions/3")["state"] == "REJECTED"
    shot(page, "model")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the page reflows, nothing is cut off
    expect(rejected.locator(".state")).to_be_visible()
    shot(page, "model-phone")


def test_write_buttons_refuse_without_a_token(page: Any, live: Live) -> None:
    """Without a token, a confirmed rollback shows the API's 401 with its hint, and PROD stays on v2."""
    page.goto(MODEL_PAGE)
    expect(page.locator("#token-state")).to_contain_text("no token")
    page.click("button[data-action='rollback']")
    expect(page.locator("#confirm-move")).to_have_text("PROD: 2 → 1")
    page.fill("#confirm-reason", "trying without a token")
    page.click("#confirm-go")
    error = page.locator("#confirm-error")
    expect(error).to_contain_text("[unauthorized]")
    expect(error).to_contain_text("next:")
    shot(page, "refused-without-token")
    assert live.prod() == "2"


def test_drift_alert_appears_on_an_open_page_without_reload(page: Any, live: Live) -> None:
    """Drifted traffic through the router raises an alert that the open model page shows over SSE, unreloaded."""
    page.goto(MODEL_PAGE)
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__sameDocument = 'yes'")
    live.send_drifted_traffic()
    banner = page.locator("#alert-banner")
    expect(banner).to_be_visible(timeout=120_000)
    expect(banner).to_contain_text("digits v2")
    expect(page.locator("#sec-alerts .alert").first).to_contain_text("v2", timeout=30_000)
    expect(page.locator("#sec-drift .overlay").first).to_be_visible(timeout=30_000)
    expect(page.locator("#sec-drift")).to_contain_text("predicted classes")
    assert page.evaluate("window.__sameDocument") == "yes"
    assert live.get("/api/v1/alerts", model="digits")["open"][0]["version"] == "2"
    shot(page, "model-drift-alert")


def test_a_canary_step_appears_on_an_open_page_without_reload(page: Any, live: Live) -> None:
    """A canary step started on v2's warm pods shows in the open page's strip over SSE: its weight and phase."""
    from release import registry
    from release.canary import CanaryRunner
    from release.db import session_scope
    from release.ports import Candidate
    from release.promotion import RoutePromoter
    from release.waits import Scheduler
    from schemas.policy import CanaryStep, ReleasePolicy
    from schemas.tables import utcnow

    page.goto(MODEL_PAGE)
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__sameDocument = 'yes'")
    app = live.app
    with session_scope(app.engine) as s:
        view = registry.get_version(s, "digits", "2")
        deployment = registry.get_deployment(s, view.id)
    assert deployment is not None and deployment.endpoints
    candidate = Candidate(model="digits", version="2", version_id=view.id, manifest=view.manifest,
                          endpoints=tuple(deployment.endpoints))
    rollout = ReleasePolicy.model_validate(view.policy).rollout.model_copy(
        update={"steps": [CanaryStep(weight=10, watch_s=3600), CanaryStep(weight=100)]})
    runner = CanaryRunner(engine=app.engine, bus=app.bus, promoter=RoutePromoter(),
                          scheduler=Scheduler(engine=app.engine, bus=app.bus, clock=utcnow), clock=utcnow,
                          fault=lambda _point: None)
    try:
        assert runner.advance(view, candidate, rollout) is None  # step 1 started: its row, route and canary.step
        strip = page.locator("#sec-summary .canary")
        expect(strip).to_contain_text("Canary v2", timeout=60_000)
        expect(strip.locator("tr[data-step='0']")).to_contain_text("watching")
        expect(strip.locator("tr[data-step='0']")).to_contain_text("10%")
        assert page.evaluate("window.__sameDocument") == "yes"
        progress = live.get("/api/v1/models/digits/canary")["canary"]["progress"]
        assert [(p["step"], p["weight"], p["phase"]) for p in progress] == [(0, 10, "watching")]
        shot(page, "model-canary-step")
    finally:
        with session_scope(app.engine) as s:
            registry.set_route_weight(s, model="digits", version="2", weight=0)


def test_rollback_clicked_in_the_page_moves_prod(page: Any, live: Live) -> None:
    """With the token kept for the session, a confirmed rollback moves PROD to v1 (read back through the API)."""
    page.goto(MODEL_PAGE)
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type='submit']")
    expect(page.locator("#token-state")).to_contain_text("kept")
    page.reload()
    expect(page.locator("#token-state")).to_contain_text("kept")  # sessionStorage: once per browser session
    page.click("button[data-action='rollback']")
    expect(page.locator("#confirm-move")).to_have_text("PROD: 2 → 1")
    page.fill("#confirm-reason", "drift on v2")
    page.click("#confirm-go")
    expect(page.locator("#confirm")).to_be_hidden()
    live.wait(lambda: live.prod() == "1", what="PROD back on v1", timeout_s=180)
    expect(page.locator(".aliases [data-alias='PROD']")).to_have_text("PROD → 1", timeout=60_000)
    moves = live.get("/api/v1/models/digits/aliases")["moves"]
    assert (moves[-1]["from_version"], moves[-1]["to_version"]) == ("2", "1")
    # The operation is audited under the credential's identity, with the reason typed in the dialog.
    entries = live.get("/api/v1/models/digits/timeline")["entries"]
    assert any(e["actor"] == "api-token" and e["reason"] == "drift on v2" for e in entries)
    shot(page, "model-after-rollback")
