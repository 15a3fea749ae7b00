"""Gateway API routes follow the registry: one HTTPRoute per alias, canary weights as backendRefs weights.

The route sync consumes ``model-events`` from a real bus over a real database, and applies by server-side apply
to kmock, a real HTTP server speaking the Kubernetes API, through the official client.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import kmock
import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from release.adapters.gateway_routes import GatewayRouteWriter
from release.adapters.k8s_names import object_name
from release.adapters.k8s_routes import GatewayRef, render_routes, route_name
from release.adapters.local_bus import LocalEventBus
from release.db import session_factory
from release.ports import SubscriptionSpec
from release.route_sync import ROUTE_SUBSCRIPTION, AliasRoute, Backend, RouteSync, prod_backends
from release.worker import Consumer, run_until_idle
from schemas.errors import PermanentError, TemporaryError
from schemas.events import EventType, Topic, make_event
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.gateway_schemas import HTTPROUTE_SCHEMA
from tests.kubernetes.release_steps import canary, move, register
from tests.kubernetes.test_manifests import DNS_1035_LABEL, MODELS, validate
from tests.servers.kube_server import KubeServer

GATEWAY = GatewayRef(name="release-gateway", namespace="gateways", hostnames=("models.example.com",))
ROUTES = ("gateway.networking.k8s.io", "v1", NAMESPACE, "httproutes")
CHECKS = ("networking.gke.io", "v1", NAMESPACE, "healthcheckpolicies")


@pytest.fixture
def writer(api_client: client.ApiClient) -> GatewayRouteWriter:
    """The Kubernetes route writer, pointed at kmock."""
    return GatewayRouteWriter(namespace=NAMESPACE, gateway=GATEWAY, api_client=api_client, request_timeout_s=5.0)


@pytest.fixture
def metrics() -> CollectorRegistry:
    """The registry the route sync counts its syncs in."""
    return CollectorRegistry()


@pytest.fixture
def release(sqlite_engine: Engine, writer: GatewayRouteWriter,
            metrics: CollectorRegistry) -> Iterator[tuple[LocalEventBus, Consumer]]:
    """A bus with the route sync's subscription, and its consumer driving the sync."""
    bus = LocalEventBus(session_factory=session_factory(sqlite_engine))
    bus.ensure_subscription(SubscriptionSpec(name=ROUTE_SUBSCRIPTION, topic=Topic.MODEL_EVENTS))
    sync = RouteSync(engine=sqlite_engine, writer=writer, registry=metrics)
    yield bus, Consumer(bus=bus, subscription=ROUTE_SUBSCRIPTION, handler=sync.handle)
    bus.close()


def _objects(api_client: client.ApiClient, where: tuple[str, str, str, str]) -> dict[str, dict[str, Any]]:
    listed: Any = client.CustomObjectsApi(api_client).list_namespaced_custom_object(*where)
    return {item["metadata"]["name"]: item for item in listed["items"]}


def _weights(api_client: client.ApiClient, model: str, alias: str) -> dict[str, int]:
    """The backend weights of an alias's HTTPRoute, by version (every rule routes alike)."""
    route = _objects(api_client, ROUTES)[route_name(model, alias)]
    validate(route)
    rules = route["spec"]["rules"]
    assert all(rule["backendRefs"] == rules[0]["backendRefs"] for rule in rules)
    names = {object_name(model, v): v for v in ("1", "2", "3")}
    return {names[ref["name"]]: ref["weight"] for ref in rules[0]["backendRefs"]}


@pytest.mark.parametrize("model", [*MODELS, "Digits v2", "fraud.model_7"])
def test_every_rendered_route_validates(model: str) -> None:
    """HTTPRoutes and health checks of any model name validate: paths percent-encoded, names DNS labels."""
    routes = [AliasRoute(model=model, alias="PROD", backends=(Backend("1", 90), Backend("A" * 64, 10))),
              AliasRoute(model=model, alias="STG", backends=(Backend("..", 100),))]
    objects = render_routes(routes, namespace="model-release", gateway=GATEWAY)

    assert [o["kind"] for o in objects] == ["HTTPRoute"] * 2 + ["HealthCheckPolicy"] * 3
    for obj in objects:
        validate(obj)
        assert DNS_1035_LABEL.fullmatch(obj["metadata"]["name"])
        assert obj["metadata"]["annotations"]["modelrelease.dev/model"] == model


def _drain(bus: LocalEventBus, consumer: Consumer) -> None:
    run_until_idle([consumer], bus=bus)


def test_alias_routes_are_applied_server_side_with_their_health_checks(
        sqlite_engine: Engine, release: tuple[LocalEventBus, Consumer], kube: KubeServer,
        api_client: client.ApiClient) -> None:
    """alias.moved for PROD and STG applies one HTTPRoute each (apply-patch, create when absent) and health checks."""
    bus, consumer = release
    register(sqlite_engine, "digits", "1", "2")
    move(sqlite_engine, bus, "digits", "PROD", "1")
    move(sqlite_engine, bus, "digits", "STG", "2")
    _drain(bus, consumer)

    routes = _objects(api_client, ROUTES)
    assert set(routes) == {route_name("digits", "PROD"), route_name("digits", "STG")}
    assert _weights(api_client, "digits", "PROD") == {"1": 100}
    assert _weights(api_client, "digits", "STG") == {"2": 100}
    checks = _objects(api_client, CHECKS)
    assert set(checks) == {object_name("digits", "1"), object_name("digits", "2")}
    for check in checks.values():
        validate(check)
        assert check["spec"]["default"]["config"]["httpHealthCheck"]["requestPath"] == "/v2/health/ready"
    patches = [r for r in kube.requests() if r.method == "PATCH" and "httproutes" in str(r.url)]
    assert patches and all(r.headers["Content-Type"] == "application/apply-patch+yaml" for r in patches)
    assert all(r.params == {"fieldManager": "model-release", "force": "true"} for r in patches)


def test_every_route_has_the_gateway_api_v1_shape(sqlite_engine: Engine, release: tuple[LocalEventBus, Consumer],
                                                  api_client: client.ApiClient) -> None:
    """Each HTTPRoute validates against the v1 fields: parentRefs, hostnames, rules, matches, filters, backendRefs."""
    bus, consumer = release
    register(sqlite_engine, "digits", "1", "2", "3")
    move(sqlite_engine, bus, "digits", "PROD", "1")
    move(sqlite_engine, bus, "digits", "STG", "3")
    canary(sqlite_engine, bus, "digits", "2", 25)
    _drain(bus, consumer)

    routes = _objects(api_client, ROUTES)
    for route in routes.values():
        jsonschema.validate(route, HTTPROUTE_SCHEMA)
        assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                "name": "release-gateway", "namespace": "gateways"}]
        assert route["spec"]["hostnames"] == ["models.example.com"]
    prod = routes[route_name("digits", "PROD")]["spec"]["rules"]
    paths = [(m["path"]["value"], (r.get("filters") or [{}])[0].get("urlRewrite", {}).get("path", {})
              .get("replaceFullPath")) for r in prod for m in r["matches"]]
    assert paths == [("/v2/models/digits/infer", None), ("/predictions/digits", None), ("/predict/digits", None),
                     ("/v2/models/digits/versions/PROD/infer", "/v2/models/digits/infer"),
                     ("/predictions/digits/PROD", "/predictions/digits"), ("/predict/digits/PROD", "/predict/digits")]
    assert prod[0]["backendRefs"] == [
        {"kind": "Service", "name": object_name("digits", "1"), "port": 8080, "weight": 75},
        {"kind": "Service", "name": object_name("digits", "2"), "port": 8080, "weight": 25}]
    stg = [m["path"]["value"] for r in routes[route_name("digits", "STG")]["spec"]["rules"] for m in r["matches"]]
    assert stg == ["/v2/models/digits/versions/STG/infer", "/predictions/digits/STG", "/predict/digits/STG"]


def test_canary_promotion_and_rollback_move_the_weights(sqlite_engine: Engine,
                                                        release: tuple[LocalEventBus, Consumer],
                                                        api_client: client.ApiClient,
                                                        metrics: CollectorRegistry) -> None:
    """canary.step shifts PROD 90/10 then 50/50, promotion gives v2 all, rollback gives v1 all again."""
    bus, consumer = release
    register(sqlite_engine, "digits", "1", "2")
    move(sqlite_engine, bus, "digits", "PROD", "1")
    _drain(bus, consumer)
    assert _weights(api_client, "digits", "PROD") == {"1": 100}

    canary(sqlite_engine, bus, "digits", "2", 10, step=0)
    _drain(bus, consumer)
    assert _weights(api_client, "digits", "PROD") == {"1": 90, "2": 10}
    canary(sqlite_engine, bus, "digits", "2", 50, step=1)
    _drain(bus, consumer)
    assert _weights(api_client, "digits", "PROD") == {"1": 50, "2": 50}

    move(sqlite_engine, bus, "digits", "PROD", "2", clear_canary=True)
    _drain(bus, consumer)
    assert _weights(api_client, "digits", "PROD") == {"2": 100}
    assert set(_objects(api_client, CHECKS)) == {object_name("digits", "2")}

    move(sqlite_engine, bus, "digits", "PROD", "1", clear_canary=True, rolled_back_from="2")
    _drain(bus, consumer)
    assert _weights(api_client, "digits", "PROD") == {"1": 100}
    # One sync per route event: the first move, two steps, the promotion, the rollback's move and its event.
    assert metrics.get_sample_value("gateway_route_syncs_total", {"outcome": "applied"}) == 6


def test_route_of_an_unset_alias_is_deleted_and_other_models_kept(
        sqlite_engine: Engine, release: tuple[LocalEventBus, Consumer], kube: KubeServer,
        api_client: client.ApiClient) -> None:
    """Unsetting STG deletes its HTTPRoute (a DELETE call); another model's routes stay untouched."""
    bus, consumer = release
    register(sqlite_engine, "digits", "1", "2")
    register(sqlite_engine, "fraud", "1")
    move(sqlite_engine, bus, "digits", "PROD", "1")
    move(sqlite_engine, bus, "digits", "STG", "2")
    move(sqlite_engine, bus, "fraud", "STG", "1")
    _drain(bus, consumer)

    move(sqlite_engine, bus, "digits", "STG", None)
    _drain(bus, consumer)

    assert set(_objects(api_client, ROUTES)) == {route_name("digits", "PROD"), route_name("fraud", "STG")}
    deletes = [str(r.url) for r in kube.requests() if r.method == "DELETE"]
    assert any(route_name("digits", "STG") in url for url in deletes)
    assert not any(route_name("fraud", "STG") in url for url in deletes)


def test_duplicate_late_and_unrelated_events_leave_the_same_routes(
        sqlite_engine: Engine, release: tuple[LocalEventBus, Consumer], api_client: client.ApiClient) -> None:
    """The sync reads the registry as it is now: a replayed old canary.step cannot bring an old split back."""
    bus, consumer = release
    register(sqlite_engine, "digits", "1", "2")
    move(sqlite_engine, bus, "digits", "PROD", "1")
    canary(sqlite_engine, bus, "digits", "2", 10)
    move(sqlite_engine, bus, "digits", "PROD", "2", clear_canary=True)
    _drain(bus, consumer)
    before = _objects(api_client, ROUTES)

    stale = make_event(EventType.CANARY_STEP, {"model": "digits", "version": "2", "step": 0, "weight": 10,
                                               "phase": "started"})
    consumer.handler(stale)
    consumer.handler(stale)
    consumer.handler(make_event(EventType.DRIFT_MEASURED, {"model": "digits"}))

    after = _objects(api_client, ROUTES)
    assert {n: r["spec"] for n, r in after.items()} == {n: r["spec"] for n, r in before.items()}
    assert _weights(api_client, "digits", "PROD") == {"2": 100}


def test_canary_weights_over_100_are_cut_back_to_a_valid_split(writer: GatewayRouteWriter,
                                                                api_client: client.ApiClient) -> None:
    """A PROD route always sums to 100 and never goes negative, whatever weights the registry holds."""
    backends = prod_backends("1", {"2": 80, "3": 60, "1": 5})
    assert backends == (Backend("1", 0), Backend("2", 80), Backend("3", 20))
    writer.apply("digits", [AliasRoute(model="digits", alias="PROD", backends=backends)])
    assert _weights(api_client, "digits", "PROD") == {"1": 0, "2": 80, "3": 20}


@pytest.mark.parametrize(("status", "error"), [(422, PermanentError), (503, TemporaryError)])
def test_api_refusals_and_outages_are_our_errors(writer: GatewayRouteWriter, kube: KubeServer,
                                                 status: int, error: type[Exception]) -> None:
    """A 422 on apply is PermanentError with the server's message; a 503 is TemporaryError (redelivered)."""
    route = [AliasRoute(model="digits", alias="PROD", backends=(Backend("1", 100),))]
    writer.apply("digits", route)  # the emulator answers a patch of a missing object before any reaction runs
    refusal = kmock.KubernetesError(status=status, reason="Refused", message=f"refused with {status}")
    kube.configure(lambda emulator: emulator[kmock.method.PATCH] << refusal)

    with pytest.raises(error) as raised:
        writer.apply("digits", route)

    assert type(raised.value) is error
    assert f"refused with {status}" in str(raised.value)


def test_a_cluster_without_the_gateway_api_says_how_to_enable_it(writer: GatewayRouteWriter,
                                                                  kube: KubeServer) -> None:
    """With no HTTPRoute CRD (404 on apply and create) the error says to enable the Gateway API."""
    missing = kmock.KubernetesError(status=404, reason="NotFound", message="the server could not find the resource")
    kube.configure(lambda emulator: emulator[re.compile(r".*/httproutes.*")] << missing)

    with pytest.raises(PermanentError, match="HTTPRoute") as caught:
        writer.apply("digits", [AliasRoute(model="digits", alias="PROD", backends=(Backend("1", 100),))])

    assert "--gateway-api=standard" in caught.value.hint
