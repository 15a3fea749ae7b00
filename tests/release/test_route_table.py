"""The route table: which version's pods a model reference reaches, how long that answer is cached, canary splits.

Time is a fake clock handed to the route table: the TTL is tested by moving the clock, never by sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sqlalchemy.engine import Engine

from release import registry
from release.db import session_scope
from release.router.route_table import RouteTable, Target
from tests.release.router_testkit import MODEL, FakeClock, Harness, Upstream, add_version, move_alias


def test_prod_version_and_other_alias_resolve_to_their_pods(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                           serve_router: Callable[..., Harness]) -> None:
    """PROD, an explicit version and another alias (STG) each reach the pods of the version they name."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
        add_version(s, "2", [upstreams["b"].url])
    move_alias(sqlite_engine, "PROD", "1")
    move_alias(sqlite_engine, "STG", "2")
    h = serve_router()
    cases = {f"/v2/models/{MODEL}/infer": ("1", "a"), f"/v2/models/{MODEL}/versions/1/infer": ("1", "a"),
             f"/v2/models/{MODEL}/versions/2/infer": ("2", "b"), f"/v2/models/{MODEL}/versions/STG/infer": ("2", "b"),
             f"/predict/{MODEL}/STG": ("2", "b"), f"/predict/{MODEL}": ("1", "a"),
             f"/predictions/{MODEL}/2": ("2", "b"), f"/predictions/{MODEL}": ("1", "a")}
    for path, (version, upstream) in cases.items():
        response = h.infer(path)
        assert response.status_code == 200, path
        assert (response.headers["x-model-version"], response.json()["served_by"]) == (version, upstream), path


def test_moved_alias_is_seen_at_once_after_invalidate(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                      serve_router: Callable[..., Harness]) -> None:
    """A cached route is served after the alias moves (bounded staleness) until ``invalidate`` drops it."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
        add_version(s, "2", [upstreams["b"].url])
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router(ttl_s=0.3, clock=FakeClock())
    assert h.infer().headers["x-model-version"] == "1"
    move_alias(sqlite_engine, "PROD", "2")
    assert h.infer().headers["x-model-version"] == "1"  # still cached: bounded staleness, not zero
    h.router.table.invalidate(MODEL)
    assert h.infer().headers["x-model-version"] == "2"


def test_moved_alias_is_seen_once_the_ttl_has_passed(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                                     serve_router: Callable[..., Harness]) -> None:
    """A resolution is served from cache for just under ``ttl_s``; at ``ttl_s`` the moved alias wins."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
        add_version(s, "2", [upstreams["b"].url])
    move_alias(sqlite_engine, "PROD", "1")
    clock = FakeClock()
    h = serve_router(ttl_s=0.5, clock=clock)
    assert h.infer().headers["x-model-version"] == "1"
    move_alias(sqlite_engine, "PROD", "2")
    clock.advance(0.375)  # steps exact in binary, so the boundary is exactly the TTL
    assert h.infer().headers["x-model-version"] == "1"
    clock.advance(0.125)
    assert h.infer().headers["x-model-version"] == "2"


def test_cache_age_gauge_states_the_staleness_bound(sqlite_engine: Engine, serve_router: Callable[..., Harness],
                                                    ) -> None:
    """The router publishes its route table's TTL as the upper bound of route staleness."""
    h = serve_router(ttl_s=0.3)
    assert h.sample("router_route_cache_ttl_seconds") == 0.3


def test_lookups_within_the_ttl_do_not_touch_the_registry(sqlite_engine: Engine) -> None:
    """A fresh cached target is returned as is, even when the registry meanwhile lost the version's pods."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", ["http://pod-1"])
    move_alias(sqlite_engine, "PROD", "1")
    clock = FakeClock()
    table = RouteTable(engine=sqlite_engine, ttl_s=0.5, clock=clock)
    first = table.lookup(MODEL, "PROD")
    with session_scope(sqlite_engine) as s:
        view = registry.get_version(s, MODEL, "1")
        registry.record_deployment(s, version_id=view.id, backend="local", status="failed", endpoints=[])
    clock.advance(0.4)
    assert table.lookup(MODEL, "PROD") is first
    assert first.endpoints == ("http://pod-1",) and first.resolved_at == 1_000.0


# ---------------------------------------------------------------------------------------------- canary
def test_canary_weights_split_picks_statistically() -> None:
    """Target.pick sends the canary its weight in percent of picks (seeded, within 4 sigma)."""
    target = Target(model=MODEL, version="1", endpoints=("http://a",), canaries=(("2", ("http://b",), 30),))
    rng = random.Random(1)
    n = 10_000
    canary = sum(target.pick(rng)[0] == "2" for _ in range(n))
    assert abs(canary - 0.3 * n) < 4 * (n * 0.3 * 0.7) ** 0.5


def test_canary_without_pods_gets_no_traffic() -> None:
    """A canary route whose version has no ready pods is skipped: PROD takes its share."""
    target = Target(model=MODEL, version="1", endpoints=("http://a",), canaries=(("2", (), 100),))
    rng = random.Random(2)
    assert {target.pick(rng)[0] for _ in range(100)} == {"1"}


def test_router_honours_canary_route_weight(sqlite_engine: Engine, upstreams: dict[str, Upstream],
                                            serve_router: Callable[..., Harness]) -> None:
    """With a 25% route weight on version 2, about a quarter of PROD requests are answered by its pods."""
    with session_scope(sqlite_engine) as s:
        add_version(s, "1", [upstreams["a"].url])
        add_version(s, "2", [upstreams["b"].url])
        registry.set_route_weight(s, model=MODEL, version="2", weight=25)
    move_alias(sqlite_engine, "PROD", "1")
    h = serve_router(seed=11)
    n = 200
    answers = [h.infer() for _ in range(n)]
    assert all(r.status_code == 200 for r in answers)
    assert all(r.headers["x-model-version"] == {"a": "1", "b": "2"}[r.json()["served_by"]] for r in answers)
    canary = sum(r.headers["x-model-version"] == "2" for r in answers)
    assert abs(canary - 0.25 * n) < 4 * (n * 0.25 * 0.75) ** 0.5
