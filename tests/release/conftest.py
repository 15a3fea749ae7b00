"""Fixtures for the router tests: upstream stand-ins for pods, one real pod process, and routers to drive.

Session-scoped servers are shared by the router test modules; tests compare counts before and after rather than
assume a fresh server. Helpers imported by name live in ``router_testkit``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.engine import Engine

from tests.release.router_testkit import MODEL, Harness, Upstream, build_harness
from tests.servers.in_thread import serve_in_thread

if TYPE_CHECKING:
    from tests.handlers.pod_testkit import Pod


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, Upstream]]:
    """Upstreams: ``a`` and ``b`` answer 200, ``broken`` 500, ``draining`` 503 not_ready, ``full`` 429 queue_full."""
    ups = {name: Upstream(name, status)
           for name, status in (("a", 200), ("b", 200), ("broken", 500), ("draining", 503), ("full", 429))}
    with contextlib.ExitStack() as servers:
        for upstream in ups.values():
            upstream.url = servers.enter_context(
                serve_in_thread(upstream.app(), name=f"upstream {upstream.name}", lifespan="off", timeout_s=10))
        yield ups


@pytest.fixture(scope="session")
def real_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """One real pod process serving a TorchScript digits MLP as ``digits`` version 1."""
    # Imported here: torch is needed only by the tests that ask for a real pod, not by every test in the folder.
    from tests.artifacts import DigitsMLP, torchscript_bytes, write_artifact
    from tests.handlers.pod_testkit import Pod

    bucket = tmp_path_factory.mktemp("bucket")
    write_artifact(bucket, MODEL, "1", {"model.pt": torchscript_bytes(DigitsMLP())})
    pod = Pod(bucket / "models" / MODEL / "1", log_dir=tmp_path_factory.mktemp("pod-logs"))
    try:
        yield pod.wait_ready(timeout_s=90)
    finally:
        pod.stop()


@pytest.fixture
def serve_router(sqlite_engine: Engine) -> Iterator[Callable[..., Harness]]:
    """Build routers over the test's SQLite store (see ``build_harness``) and stop them after the test."""
    harnesses: list[Harness] = []

    def build(**options: Any) -> Harness:
        harnesses.append(build_harness(sqlite_engine, **options))
        return harnesses[-1]

    yield build
    for harness in harnesses:
        harness.client.__exit__(None, None, None)
