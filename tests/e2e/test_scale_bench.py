"""``bench/scale`` at a tiny size, so the benchmark cannot rot: real roles, real pods, its checks must pass."""

from __future__ import annotations

import json

import pytest

from bench.scale import scale

pytestmark = pytest.mark.slow


def test_the_scale_bench_settles_two_versions_with_every_check_passing(capsys: pytest.CaptureFixture[str]) -> None:
    """Two versions of one model dropped at once: the good one LIVE and PROD, the other rejected, checks pass."""
    code = scale.main(["--versions", "2", "--models", "1", "--timeout", "240", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["final_states"] == {"scale-000/1": "REJECTED", "scale-000/2": "LIVE"}
    assert {name: ok for name, (ok, _detail) in report["checks"].items()} == dict.fromkeys(report["checks"], True)
    assert report["pods_started"] >= 2  # one per version, plus warm spares where the pool keeps them
    assert report["peak_pod_rss_mib"] > 0
    assert code == 0
