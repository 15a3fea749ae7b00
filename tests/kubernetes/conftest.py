"""A Kubernetes API served over real HTTP by kmock, for the official ``kubernetes`` client to talk to.

kmock is asyncio; the client is blocking. The emulator therefore runs its own event loop in a thread, and
the tests reach it only through HTTP or through ``KubeServer.configure``, which runs a change inside that
loop. What kmock does not do, the tests do themselves: it keeps no status (tests patch it in), ignores label
and field selectors, and answers an apply-patch for a missing object with 404 (the backend then creates).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from release.adapters.k8s_manifests import ServingOptions
from release.adapters.kubernetes_serving import KubernetesServingBackend
from tests.servers.kube_server import KubeServer, running_kube

NAMESPACE = "serving"


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    """A fresh emulated API server on 127.0.0.1 knowing the kinds the backend manages."""
    with running_kube() as server:
        yield server


@pytest.fixture
def api_client(kube: KubeServer) -> Iterator[client.ApiClient]:
    """The official client pointed at the emulator."""
    configuration = client.Configuration(host=kube.url)
    api = client.ApiClient(configuration)
    yield api
    api.close()


@pytest.fixture
def backend(api_client: client.ApiClient) -> Iterator[KubernetesServingBackend]:
    """The backend under test, with short watch windows since kmock ignores the watch timeout."""
    serving = KubernetesServingBackend(namespace=NAMESPACE, api_client=api_client,
                                       options=ServingOptions(accelerator="nvidia-l4"),
                                       watch_window_s=2.0, request_timeout_s=5.0)
    yield serving
    serving.close()
