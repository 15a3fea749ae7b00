"""`release deploy routes NAME` prints the HTTPRoutes the route sync would apply, as the release goes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine

from app import cli
from release.adapters.k8s_names import object_name
from release.db import make_engine, migrate
from tests.kubernetes.release_steps import canary, move, register
from tests.kubernetes.test_manifests import validate


@pytest.fixture
def home_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The CLI's store (RELEASE_HOME) with digits 1 and 2 registered and PROD on 1."""
    monkeypatch.setenv("RELEASE_HOME", str(tmp_path))
    monkeypatch.setenv("RELEASE_LOG_FORMAT", "json")
    engine = make_engine(f"sqlite:///{tmp_path / 'release.db'}")
    migrate(engine)
    register(engine, "digits", "1", "2")
    move(engine, None, "digits", "PROD", "1")
    yield engine
    engine.dispose()


def _routes(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, dict[str, Any]]:
    """The printed HTTPRoutes (YAML, the default output) by alias, each validated."""
    capsys.readouterr()
    assert cli.main(["deploy", "routes", "digits", *extra]) == 0
    documents = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    for document in documents:
        validate(document)
    return {d["metadata"]["annotations"]["modelrelease.dev/alias"]: d for d in documents if d["kind"] == "HTTPRoute"}


def _prod_weights(capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    refs = _routes(capsys)["PROD"]["spec"]["rules"][0]["backendRefs"]
    names = {object_name("digits", v): v for v in ("1", "2")}
    return {names[ref["name"]]: ref["weight"] for ref in refs}


def test_routes_follow_canary_promotion_and_rollback(home_engine: Engine,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """PROD's weights: 1 alone, then 90/10 in a canary step, 2 alone once promoted, 1 alone after rollback."""
    assert _prod_weights(capsys) == {"1": 100}
    canary(home_engine, None, "digits", "2", 10)
    assert _prod_weights(capsys) == {"1": 90, "2": 10}
    move(home_engine, None, "digits", "PROD", "2", clear_canary=True)
    assert _prod_weights(capsys) == {"2": 100}
    move(home_engine, None, "digits", "PROD", "1", clear_canary=True)
    assert _prod_weights(capsys) == {"1": 100}


def test_routes_attach_to_the_named_gateway_with_one_route_per_alias(
        home_engine: Engine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """STG gets its own route; RELEASE_GATEWAY and RELEASE_GATEWAY_HOSTNAMES set parentRefs and hostnames."""
    move(home_engine, None, "digits", "STG", "2")
    monkeypatch.setenv("RELEASE_GATEWAY", "edge/gateways")
    monkeypatch.setenv("RELEASE_GATEWAY_HOSTNAMES", "models.example.com")
    routes = _routes(capsys, "--namespace", "serving")

    assert set(routes) == {"PROD", "STG"}
    for route in routes.values():
        assert route["metadata"]["namespace"] == "serving"
        (parent,) = route["spec"]["parentRefs"]
        assert (parent["kind"], parent["name"], parent["namespace"]) == ("Gateway", "edge", "gateways")
        assert route["spec"]["hostnames"] == ["models.example.com"]


def test_routes_json_lists_routes_then_health_checks(home_engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints a list: the HTTPRoute of PROD, then the HealthCheckPolicy of its Service."""
    capsys.readouterr()
    assert cli.main(["deploy", "routes", "digits", "--json"]) == 0
    documents = json.loads(capsys.readouterr().out)

    assert [d["kind"] for d in documents] == ["HTTPRoute", "HealthCheckPolicy"]
    assert documents[1]["spec"]["targetRef"]["name"] == object_name("digits", "1")


@pytest.mark.parametrize(("argv", "message"), [
    (["deploy", "routes", "nope"], "nope"),
    (["deploy", "routes", "digits", "--gateway", "no-namespace"], "NAME/NAMESPACE"),
])
def test_routes_refusals_say_what_to_do(home_engine: Engine, capsys: pytest.CaptureFixture[str],
                                        argv: list[str], message: str) -> None:
    """An unknown model or a malformed --gateway exits 3 with the reason and the next step."""
    capsys.readouterr()
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert message in err and "next:" in err


def test_render_with_the_fuse_source_mounts_the_bucket(home_engine: Engine,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`deploy render --model-source gcsfuse` prints the FUSE variant: CSI volume, digest check, no init copy."""
    capsys.readouterr()
    assert cli.main(["deploy", "render", "digits", "PROD", "--json", "--model-source", "gcsfuse"]) == 0
    (deployment, *_rest) = json.loads(capsys.readouterr().out)
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]

    assert any(v.get("csi", {}).get("driver") == "gcsfuse.csi.storage.gke.io" for v in pod["volumes"])
    assert "--expect-digest" in pod["containers"][0]["args"] and "initContainers" not in pod
