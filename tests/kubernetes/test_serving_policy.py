"""The policy's ``serving`` section shapes what `release deploy render` (and so the controller) gives a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app import cli
from release import policies, registry
from release.db import make_engine, migrate, session_scope
from tests.kubernetes.test_manifests import validate

VERSION = "3"


def _register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: dict[str, Any] | None) -> None:
    """Register digits/3 from a gs:// bucket under the operator's policy set with `release policy set`."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RELEASE_HOME", str(home))
    monkeypatch.setenv("RELEASE_LOG_FORMAT", "json")
    monkeypatch.setenv("RELEASE_GPU", "auto")
    engine = make_engine(f"sqlite:///{home / 'release.db'}")
    migrate(engine)
    if policy is not None:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(policy))
        assert cli.main(["policy", "set", "digits", str(path), "--reason", "test"]) == 0
    with session_scope(engine) as s:
        # What intake records: the operator's policy in force at registration.
        view = policies.current(s, "digits")
        registry.register_version(s, model="digits", version=VERSION, digest="sha256:" + "0" * 64,
                                  artifact_uri="gs://models-bkt/models/digits/3", format="state_dict",
                                  manifest={}, policy=view.policy.model_dump(mode="json") if view else {})
    engine.dispose()


def _render(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert cli.main(["deploy", "render", "digits", VERSION, "--json", *extra]) == 0
    documents: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    for document in documents:
        validate(document)
    return {d["kind"]: d for d in documents}


def test_render_requests_one_l4_gpu_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """With no policy and RELEASE_GPU=auto, the pod asks for one nvidia.com/gpu on an nvidia-l4 node."""
    _register(tmp_path, monkeypatch, None)
    pod = _render(capsys)["Deployment"]["spec"]["template"]["spec"]
    server = pod["containers"][0]

    assert server["resources"]["limits"]["nvidia.com/gpu"] == server["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_operator_policy_shapes_deployment_and_hpa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """T4 x2, 2-6 replicas, CPU, memory, queue target, workers and batching reach the Deployment and HPA."""
    _register(tmp_path, monkeypatch, {"serving": {
        "accelerator": "nvidia-tesla-t4", "gpus": 2, "cpu": "4", "memory": "16Gi", "min_replicas": 2,
        "max_replicas": 6, "target_queue_ms": 80, "http_workers": 3, "max_batch_size": 16,
        "max_batch_delay_ms": 5}})
    objects = _render(capsys)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    hpa = objects["HorizontalPodAutoscaler"]["spec"]

    assert server["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "20Gi",
                                             "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "80m"
    args = server["args"]
    assert args[args.index("--http-workers") + 1] == "3"
    assert args[args.index("--max-batch-size") + 1] == "16"
    assert args[args.index("--max-batch-delay-ms") + 1] == "5"


def test_serving_min_replicas_wins_over_rollout_replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """rollout.replicas is the minimum unless serving.min_replicas is set, which then wins."""
    _register(tmp_path, monkeypatch, {"rollout": {"replicas": 3}, "serving": {"min_replicas": 2}})

    assert _render(capsys)["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2


def test_accelerator_none_renders_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`accelerator: none` serves on CPU: no GPU resource, no accelerator selector, no GPU toleration."""
    _register(tmp_path, monkeypatch, {"serving": {"accelerator": "none"}})
    pod = _render(capsys)["Deployment"]["spec"]["template"]["spec"]

    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod


def test_gpu_setting_off_overrides_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """RELEASE_GPU=off serves every version on CPU whatever its policy asks."""
    _register(tmp_path, monkeypatch, None)
    monkeypatch.setenv("RELEASE_GPU", "off")
    pod = _render(capsys)["Deployment"]["spec"]["template"]["spec"]

    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
