"""The control plane manifests under deploy/k8s: schema-valid, locked down, and least-privilege RBAC."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubernetes.test_manifests import validate

DEPLOY_K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# kustomization.yaml configures kubectl's kustomize; it is not an API object and has no schema to check.
MANIFESTS = sorted(p for p in DEPLOY_K8S.glob("*.yaml") if p.name != "kustomization.yaml")
MANAGED = {"get", "list", "watch", "create", "patch", "delete"}


def _objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in _objects() if obj["kind"] == kind]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_control_plane_manifest_validates(path: Path) -> None:
    """Each document validates against the Kubernetes 1.37 schemas (PodMonitoring, Gateway against their CRDs')."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]

    assert documents
    for obj in documents:
        validate(obj)


def test_role_grants_only_what_the_serving_backend_uses() -> None:
    """One namespaced Role: manage the per-version kinds and the routes, read pods and their logs, nothing else."""
    assert _of_kind("ClusterRole") == [] and _of_kind("ClusterRoleBinding") == []
    (role,) = _of_kind("Role")
    grants = {(group, resource): set(rule["verbs"])
              for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}

    assert grants == {
        ("apps", "deployments"): MANAGED,
        ("", "services"): MANAGED,
        ("autoscaling", "horizontalpodautoscalers"): MANAGED,
        ("monitoring.googleapis.com", "podmonitorings"): MANAGED,
        ("gateway.networking.k8s.io", "httproutes"): MANAGED,
        ("networking.gke.io", "healthcheckpolicies"): MANAGED,
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
    }


def test_only_the_controller_holds_the_role() -> None:
    """The RoleBinding names the controller's service account, and only the controller mounts a token."""
    (binding,) = _of_kind("RoleBinding")
    subjects = [(s["kind"], s["name"]) for s in binding["subjects"]]
    tokens = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["automountServiceAccountToken"]
              for d in _of_kind("Deployment")}
    controller_sa = next(d["spec"]["template"]["spec"]["serviceAccountName"] for d in _of_kind("Deployment")
                         if d["metadata"]["name"] == "release-controller")

    assert subjects == [("ServiceAccount", controller_sa)]
    assert {name for name, mounted in tokens.items() if mounted} == {"release-controller"}


def test_control_plane_pods_are_locked_down() -> None:
    """Every control plane container runs non-root on a read-only root without privileges or capabilities."""
    for deployment in _of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}


def test_pod_monitoring_scrapes_every_control_plane_role() -> None:
    """Managed Prometheus scrapes /metrics on the `http` port of each role's pods, the monitor's among them."""
    monitors = _of_kind("PodMonitoring")
    covered = set()
    for deployment in _of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for monitor in monitors:
            selector = monitor["spec"]["selector"]["matchLabels"]
            endpoints = {(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]}
            if selector.items() <= labels.items() and any(port in ports for port, _ in endpoints):
                assert ("http", "/metrics") in endpoints
                covered.add(labels["app.kubernetes.io/component"])

    assert covered == {"controller", "router", "api", "monitor"}


def test_gateway_uses_a_gke_class_and_its_proxies_may_reach_the_model_pods() -> None:
    """The Gateway is GKE's, takes routes of its own namespace, and the pods admit the proxy-only subnet."""
    (gateway,) = _of_kind("Gateway")
    setup = (DEPLOY_K8S.parent / "gcp" / "setup.sh").read_text()
    (proxy_range,) = re.findall(r'PROXY_SUBNET_RANGE="\$\{PROXY_SUBNET_RANGE:-([0-9./]+)\}"', setup)
    (policy,) = [p for p in _of_kind("NetworkPolicy") if p["metadata"]["name"] == "model-pods-from-gateway"]
    sources = [s["ipBlock"]["cidr"] for rule in policy["spec"]["ingress"] for s in rule["from"]]

    assert gateway["spec"]["gatewayClassName"].startswith("gke-l7-")
    assert all(lst["allowedRoutes"]["namespaces"]["from"] == "Same" for lst in gateway["spec"]["listeners"])
    assert proxy_range in sources
