"""The dashboard's pages render the read API's numbers server-side, escape manifest text, and redirect `/`."""

from __future__ import annotations

from starlette.testclient import TestClient

from app.console import charts
from tests.console.seed import HOSTILE


def test_root_redirects_to_the_dashboard(client: TestClient) -> None:
    """`/` answers a redirect to `/ui/`."""
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui/"


def test_home_lists_models_with_prod_and_alerts(client: TestClient) -> None:
    """Home shows digits with PROD 2, its state counts and the open critical alert."""
    html = client.get("/ui/").text
    assert 'href="/ui/models/digits"' in html and "PROD</span> 2" in html
    assert "CRITICAL" in html and "1 open" in html


def test_model_page_shows_states_gate_comparison_and_drift(client: TestClient) -> None:
    """The model page has each version's state with its reason, the gate table against PROD, and drift overlays."""
    html = client.get("/ui/models/digits").text
    assert 'data-version="3" data-state="REJECTED"' in html and "regression:accuracy failed" in html
    assert "against PROD <strong>2</strong>" in html and "-0.8500" in html
    assert 'class="overlay"' in html and "predicted classes" in html
    assert "PROD: 2 → 1" in html  # the rollback's confirmation names what moves where


def test_manifest_text_is_escaped(client: TestClient) -> None:
    """A description holding HTML is shown as text on the model and version pages, never as markup."""
    for path in ("/ui/models/digits", "/ui/models/digits/versions/3"):
        html = client.get(path).text
        assert HOSTILE not in html and "&lt;img src=x" in html


def test_fragments_and_unknown_sections(client: TestClient) -> None:
    """A section re-renders alone; an unknown section or model is the error page with its status."""
    assert 'data-version="2"' in client.get("/ui/models/digits/fragments/versions").text
    assert client.get("/ui/models/digits/fragments/nope").status_code == 404
    missing = client.get("/ui/models/nope")
    assert missing.status_code == 404 and "model_not_found" in missing.text


def test_overlay_scales_both_series_to_the_larger_share() -> None:
    """The tallest bar of either series fills the chart; the others scale with it."""
    chart = charts.overlay([0.5, 0.25], [0.25, 0.0], ["a", "b"])
    assert chart["reference"][0].height == charts.HEIGHT and chart["live"][0].height == charts.HEIGHT / 2
    assert charts.traffic_split("2", {"version": "3", "weight": 10}) == [
        {"version": "2", "weight": 90, "role": "PROD"}, {"version": "3", "weight": 10, "role": "canary"}]
