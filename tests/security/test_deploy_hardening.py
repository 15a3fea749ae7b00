"""deploy/ holds the least privilege the trust model promises: the API token only where writes are served, one
identity per role with named topic grants, a NetworkPolicy around model pods, and a pod image that pins the torch
the project tests with (at least 2.6, past CVE-2025-32434)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_K8S = ROOT / "deploy" / "k8s"
REQUIREMENTS = ROOT / "deploy" / "docker" / "pod-requirements.txt"


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for path in sorted(DEPLOY_K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == kind]


def test_only_the_api_receives_the_api_token() -> None:
    """The token that authorises writes reaches the API Deployment and no other role."""
    holders = {d["metadata"]["name"] for d in _of_kind("Deployment")
               for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])
               if e["name"] == "RELEASE_API_TOKEN"}
    assert holders == {"release-api"}


def test_each_role_runs_as_its_own_identity_and_relays_only_its_topics() -> None:
    """One service account per role, and each relays only the topics setup.sh lets it publish to."""
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in _of_kind("Deployment")}
    accounts = {name: spec["serviceAccountName"] for name, spec in deployments.items()}
    assert len(set(accounts.values())) == len(accounts)
    setup = (DEPLOY_K8S.parent / "gcp" / "setup.sh").read_text()
    for name, spec in deployments.items():
        relay = next(e["value"] for e in spec["containers"][0]["env"] if e["name"] == "RELEASE_RELAY_TOPICS")
        grant = next(line for line in setup.splitlines() if line.strip().startswith(f'"{accounts[name]}='))
        published = grant.split("=", 1)[1].split("|")[0].split(",")
        assert set(relay.split(",")) <= set(published), name
    assert "roles/pubsub.editor" not in setup


def test_model_pods_accept_only_the_serving_path_and_reach_only_dns_metadata_and_https() -> None:
    """The NetworkPolicy selects the rendered model pods, admits router, controller and Prometheus, and lets
    them out only to DNS, the metadata server and HTTPS outside the private ranges."""
    (policy,) = [p for p in _of_kind("NetworkPolicy") if p["metadata"]["name"] == "model-pods"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "model-server",
                                                  "app.kubernetes.io/component": "serving"}
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    sources = ingress["from"]
    assert sources[0]["podSelector"]["matchExpressions"][0]["values"] == ["router", "controller"]
    assert sources[1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "gmp-system"}
    https = spec["egress"][-1]
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(https["to"][0]["ipBlock"]["except"])


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"\[.*\]", "", name).lower()] = version.strip()
    return pins


def test_the_pod_image_pins_the_torch_the_makefile_tests_with():
    """pod-requirements.txt and the Makefile's TORCH name the same torch, and it is at least 2.6."""
    tested = re.search(r"^TORCH\s*\?=\s*torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert tested is not None
    assert _pins()["torch"] == tested.group(1)
    major, minor = (int(p) for p in tested.group(1).split(".")[:2])
    assert (major, minor) >= (2, 6)


def test_the_pod_image_takes_torch_from_its_requirements_not_from_a_base_image():
    """No PyTorch base image with its own torch version hides behind the pin."""
    dockerfile = (ROOT / "deploy" / "docker" / "pod.Dockerfile").read_text()
    assert "pytorch/pytorch" not in dockerfile
    assert "pod-requirements.txt" in dockerfile


def test_every_pod_dependency_is_pinned_at_the_version_tested_here():
    """Each pinned package is the version installed in the environment the suite runs in."""
    for name, version in _pins().items():
        installed = metadata.version(name).split("+")[0]
        assert installed == version, f"{name}: pod image pins {version}, tests run {installed}"
