"""`release up --only controller` runs the Gateway route sync when serving on Kubernetes with RELEASE_GATEWAY."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from app.stack import start_stack
from release import registry
from release.adapters.k8s_names import object_name
from release.adapters.k8s_routes import route_name
from release.bootstrap import bootstrap
from release.db import session_scope
from release.settings import Settings
from schemas.states import VersionState
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.release_steps import canary, move, register
from tests.servers.kube_server import KubeServer

ROUTES = ("gateway.networking.k8s.io", "v1", NAMESPACE, "httproutes")


@pytest.fixture
def controller_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kube: KubeServer) -> Iterator[None]:
    """Settings of a controller on Kubernetes with Gateway routing, its kubeconfig pointing at kmock."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": kube.url}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    for name, value in {"KUBECONFIG": str(kubeconfig), "RELEASE_HOME": str(tmp_path / "home"),
                        "RELEASE_SERVING": "kubernetes", "RELEASE_K8S_NAMESPACE": NAMESPACE,
                        "RELEASE_GATEWAY": f"release-gateway/{NAMESPACE}", "RELEASE_LOG_FORMAT": "json",
                        "RELEASE_POLL_INTERVAL_S": "0.05"}.items():
        monkeypatch.setenv(name, value)
    # The client reads KUBECONFIG once, when first imported; a deployment sets it before the process starts.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    (tmp_path / "home").mkdir()
    yield


def _prod_weights(api_client: client.ApiClient) -> dict[str, int] | None:
    listed: Any = client.CustomObjectsApi(api_client).list_namespaced_custom_object(*ROUTES)
    routes = {item["metadata"]["name"]: item for item in listed["items"]}
    route = routes.get(route_name("digits", "PROD"))
    if route is None:
        return None
    names = {object_name("digits", v): v for v in ("1", "2")}
    return {names[ref["name"]]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def _until(api_client: client.ApiClient, want: dict[str, int]) -> None:
    """Wait for the stack's route sync thread to apply ``want`` (it runs beside the test)."""
    deadline = time.monotonic() + 30
    while (seen := _prod_weights(api_client)) != want:
        assert time.monotonic() < deadline, f"PROD route is {seen}, not {want}"
        time.sleep(0.05)


def test_controller_role_keeps_routes_level_with_aliases_and_canaries(controller_env: None,
                                                                       api_client: client.ApiClient) -> None:
    """The controller role's `gateway-routes` consumer applies PROD's route, then its canary split."""
    app = bootstrap(Settings())
    stack = start_stack(app, role="controller")
    try:
        register(app.engine, "digits", "1", "2")
        with session_scope(app.engine) as s:  # settled versions: the controller itself has nothing to do
            for version in ("1", "2"):
                registry.transition(s, model="digits", version=version, to=VersionState.FAILED, reason="test")
        move(app.engine, app.bus, "digits", "PROD", "1")
        _until(api_client, {"1": 100})
        canary(app.engine, app.bus, "digits", "2", 10)
        _until(api_client, {"1": 90, "2": 10})
        assert "gateway-routes" in {t.name for t in stack.parts.threads}
    finally:
        stack.close()
        app.close()


def test_local_serving_runs_no_route_sync(controller_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With local pods the Python router reads the registry: no route sync thread, whatever RELEASE_GATEWAY says."""
    monkeypatch.setenv("RELEASE_SERVING", "local")
    app = bootstrap(Settings())
    stack = start_stack(app, role="controller")
    try:
        names = {t.name for t in stack.parts.threads}
    finally:
        stack.close()
        app.close()
    assert "controller" in names and "gateway-routes" not in names and "gateway-resync" not in names
