"""The control plane manifests under deploy/k8s: schema-valid, locked down, and least-privilege RBAC."""

from __future__ import annotations

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
    """Each document validates against the Kubernetes 1.37 schemas (PodMonitoring against its CRD's)."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]

    assert documents
    for obj in documents:
        validate(obj)


def test_role_grants_only_what_the_serving_backend_uses() -> None:
    """One namespaced Role: manage the four per-version kinds, read pods and their logs, nothing else."""
    assert _of_kind("ClusterRole") == [] and _of_kind("ClusterRoleBinding") == []
    (role,) = _of_kind("Role")
    grants = {(group, resource): set(rule["verbs"])
              for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}

    assert grants == {
        ("apps", "deployments"): MANAGED,
        ("", "services"): MANAGED,
        ("autoscaling", "horizontalpodautoscalers"): MANAGED,
        ("monitoring.googleapis.com", "podmonitorings"): MANAGED,
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
