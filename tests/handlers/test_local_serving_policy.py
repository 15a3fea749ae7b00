"""Local pods take their shape from the policy's ``serving`` section, as Kubernetes pods do."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pod_testkit import Artifacts, Digits, infer_body

from release.adapters.local_replica import pid_cmdline
from release.adapters.local_serving import LocalServingBackend
from release.deployment_spec import deployment_spec
from release.registry import VersionView
from schemas.states import VersionState


def _view(path: Path, policy: dict[str, Any]) -> VersionView:
    now = datetime.now(UTC)
    return VersionView(id=1, model="digits", version="1", seq=1, state=VersionState.DEPLOYING, state_reason="",
                       intent="", digest="", artifact_uri=path.as_uri(), format="torchscript", manifest={},
                       metrics={}, policy=policy, revision=1, created_at=now, updated_at=now)


def test_local_pod_runs_with_the_policys_workers_and_batching(backend: LocalServingBackend, artifacts: Artifacts,
                                                               digits: Digits) -> None:
    """http_workers, max_batch_size, max_batch_delay_ms reach the pod's command line; `none` serves on CPU."""
    policy = {"serving": {"accelerator": "none", "http_workers": 2, "max_batch_size": 4,
                          "max_batch_delay_ms": 7}}
    spec = deployment_spec(_view(artifacts.digits_ts, policy), local_path=artifacts.digits_ts)
    backend.deploy(spec)
    endpoint = backend.wait_ready(spec, timeout_s=90).endpoints[0]
    pid = json.loads(backend.state_path.read_text())["pods"][0]["pid"]
    command = pid_cmdline(pid) or []

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert (flag("--http-workers"), flag("--max-batch-size"), flag("--max-batch-delay-ms")) == ("2", "4", "7.0")
    assert flag("--device") == "cpu"
    answer = httpx.post(f"{endpoint}/v2/models/digits/infer", json=infer_body(digits.x[:1]), timeout=30)
    assert answer.status_code == 200
