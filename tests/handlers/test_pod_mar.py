"""TorchServe archives made by the real torch-model-archiver load and serve without TorchServe installed."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from pod_testkit import Artifacts, Digits, Pod


@pytest.fixture(scope="module")
def class_pod(module_pods, artifacts: Artifacts) -> Pod:
    """A .mar whose handler derives from ts.torch_handler.base_handler.BaseHandler (eager model + state dict)."""
    return module_pods(artifacts.mar_class).wait_ready()


@pytest.fixture(scope="module")
def function_pod(module_pods, artifacts: Artifacts) -> Pod:
    """A .mar whose handler is a module-level handle(data, context) over a TorchScript model."""
    return module_pods(artifacts.mar_function).wait_ready()


def test_base_handler_subclass_predicts(class_pod: Pod, digits: Digits):
    """The BaseHandler-derived archive answers the right digit (labels from index_to_name.json) per row."""
    response = httpx.post(f"{class_pod.url}/predictions/digits_class", json={"input": digits.x[:20].tolist()},
                          timeout=30)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == 20
    accuracy = np.mean([int(a["digit"]) == y for a, y in zip(answers, digits.y[:20], strict=True)])
    assert accuracy > 0.9 and all(0 < a["probability"] <= 1 for a in answers)


def test_mar_is_served_under_its_manifest_name_and_version(class_pod: Pod):
    """A .mar is served under MAR-INF/MANIFEST.json's modelName and modelVersion."""
    body = httpx.get(f"{class_pod.url}/v2/models/digits_class").json()
    assert body["name"] == "digits_class" and body["versions"] == ["1.0"]
    assert body["platform"] == "pytorch_mar" and body["handler"] == "handler.py"
    assert httpx.get(f"{class_pod.url}/predictions/digits_class/1.0", timeout=30).status_code == 405
    assert httpx.post(f"{class_pod.url}/predictions/other", json=[], timeout=30).status_code == 404


def test_module_handle_function_predicts(function_pod: Pod, digits: Digits):
    """The module-level handle() archive answers the right digits, through /predictions/{m}/{v}."""
    response = httpx.post(f"{function_pod.url}/predictions/digits_fn/1.0", json=digits.x[:30].tolist(),
                          timeout=30)
    assert response.status_code == 200, response.text
    assert (np.asarray(response.json()) == digits.y[:30]).mean() > 0.9


def test_mar_over_open_inference_protocol(function_pod: Pod, digits: Digits):
    """OIP infer on a .mar hands the tensor to the handler and returns its answer as an 'output' tensor."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": digits.x[:3].ravel().tolist()}]}
    response = httpx.post(f"{function_pod.url}/v2/models/digits_fn/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "output" and output["shape"] == [3]
    assert output["data"] == digits.y[:3].tolist()


def test_concurrent_requests_to_a_mar_are_batched_per_request(function_pod: Pod, digits: Digits):
    """Concurrent /predictions requests to a .mar each get their own answer back."""
    import asyncio

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=function_pod.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predictions/digits_fn", json=digits.x[i:i + 2].tolist())
                                          for i in range(0, 20, 2)))

    for i, response in enumerate(asyncio.run(send())):
        assert response.status_code == 200
        assert len(response.json()) == 2 and response.json()[0] == digits.y[2 * i]
