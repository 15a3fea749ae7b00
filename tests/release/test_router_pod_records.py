"""A request is recorded once: by the router when it records, else by a pod started with --record-predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from release import registry
from release.db import session_scope
from release.router import PredictionLogger
from schemas.pod_records import POD_RECORDS_KIND, PodRecordsLine
from tests.handlers.pod_testkit import Pod, eventually
from tests.release.router_testkit import MODEL, ROW, Harness, RecordingBus, move_alias


@pytest.fixture(scope="module")
def recording_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """A real digits pod that prints prediction records (as on Kubernetes)."""
    from tests.artifacts import DigitsMLP, torchscript_bytes, write_artifact

    bucket = tmp_path_factory.mktemp("bucket")
    write_artifact(bucket, MODEL, "1", {"model.pt": torchscript_bytes(DigitsMLP())})
    pod = Pod(bucket / "models" / MODEL / "1", log_dir=tmp_path_factory.mktemp("pod-logs"),
              args=["--record-predictions", "--log-format", "json"])
    try:
        yield pod.wait_ready(timeout_s=90)
    finally:
        pod.stop()


def printed_ids(pod: Pod) -> list[str]:
    """Request ids of the records the pod printed so far."""
    lines = [PodRecordsLine.model_validate_json(line) for line in pod.log.splitlines()
             if f'"kind":"{POD_RECORDS_KIND}"' in line]
    return [record.request_id for line in lines for record in line.records]


def route_to(engine: Engine, pod: Pod) -> None:
    """Register digits version 1 on ``pod`` as PROD."""
    with session_scope(engine) as s:
        view = registry.register_version(s, model=MODEL, version="1", digest="sha256:1", format="torchscript",
                                         artifact_uri=f"file:///b/models/{MODEL}/1/", policy={},
                                         manifest={"inputs": [{"name": "input", "datatype": "FP32",
                                                               "shape": [-1, 64]}]}).version
        registry.record_deployment(s, version_id=view.id, backend="local", status="ready", endpoints=[pod.url])
    move_alias(engine, "PROD", "1")


def direct(pod: Pod, request_id: str) -> None:
    """One request straight to the pod, as a Gateway would send it."""
    response = httpx.post(f"{pod.url}/v2/models/{MODEL}/infer", headers={"x-request-id": request_id}, timeout=30,
                          json=ROW)
    assert response.status_code == 200, response.text


def test_the_router_records_what_it_proxies_and_the_pod_does_not(sqlite_engine: Engine, recording_pod: Pod,
                                                                 serve_router: Callable[..., Harness]) -> None:
    """Through a recording router: one record each, by the router; the pod prints only what came to it directly."""
    route_to(sqlite_engine, recording_pod)
    bus = RecordingBus()
    logger = PredictionLogger(engine=sqlite_engine, bus=bus)
    h = serve_router(logger=logger)
    for i in range(3):
        assert h.infer(**{"X-Request-ID": f"routed-{i}"}).status_code == 200
    logger.flush()
    direct(recording_pod, "direct-1")

    assert [r["request_id"] for r in bus.records()] == ["routed-0", "routed-1", "routed-2"]
    # The pod prints in arrival order: once the direct request is out, a routed one would be too.
    assert eventually(lambda: printed_ids(recording_pod), lambda ids: "direct-1" in ids) == ["direct-1"]


def test_a_router_that_does_not_record_leaves_it_to_the_pod(sqlite_engine: Engine, recording_pod: Pod,
                                                            serve_router: Callable[..., Harness]) -> None:
    """A router without a prediction logger does not claim the request: the pod records it."""
    route_to(sqlite_engine, recording_pod)
    h = serve_router()
    assert h.infer(**{"X-Request-ID": "unrecorded-by-router"}).status_code == 200
    assert "unrecorded-by-router" in eventually(lambda: printed_ids(recording_pod),
                                                lambda ids: "unrecorded-by-router" in ids)
