"""Every pod endpoint over real HTTP against real pod processes: OIP v2, TorchServe-style, metrics, bad input."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import orjson
import pytest
from pod_testkit import Artifacts, Digits, Pod, infer_body, metric_samples


@pytest.fixture(scope="module")
def digits_pod(module_pods, artifacts: Artifacts) -> Pod:
    """The TorchScript digits model behind the tabular handler, with a small body limit."""
    return module_pods(artifacts.digits_ts, "--max-body-bytes", "200000").wait_ready()


@pytest.fixture(scope="module")
def client(digits_pod: Pod):
    """An HTTP client bound to the digits pod."""
    with httpx.Client(base_url=digits_pod.url, timeout=30) as http:
        yield http


def predicted(response: httpx.Response) -> np.ndarray:
    """Predicted classes from an OIP infer response of the digits model."""
    output = response.json()["outputs"][0]
    return np.asarray(output["data"]).reshape(output["shape"]).argmax(axis=1)


# ------------------------------------------------------------------------------------------ health and metadata
def test_health_live_and_ready(client):
    """Liveness and readiness answer 200 once the model is loaded."""
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_server_metadata(client):
    """/v2 answers OIP server metadata."""
    assert client.get("/v2").json()["name"] == "handlers.server"


def test_model_metadata(client):
    """Model metadata lists name, version, platform and the declared tensors, with or without the version."""
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        body = client.get(path).json()
        assert body["name"] == "digits" and body["versions"] == ["1"]
        assert body["platform"] == "pytorch_torchscript"
        assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


def test_model_ready(client):
    """Model readiness answers 200 for the served model and version."""
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert client.get("/v2/models/digits/versions/1/ready").status_code == 200


def test_ping(client):
    """TorchServe's /ping says Healthy."""
    assert client.get("/ping").json() == {"status": "Healthy"}


def test_unknown_model_and_version(client, digits: Digits):
    """Another model name is 404 model_not_found; another version is 404 version_not_found."""
    response = client.post("/v2/models/other/infer", json=infer_body(digits.x[:1]))
    assert response.status_code == 404 and response.json()["reason"] == "model_not_found"
    response = client.post("/v2/models/digits/versions/9/infer", json=infer_body(digits.x[:1]))
    assert response.status_code == 404 and response.json()["reason"] == "version_not_found"


# ------------------------------------------------------------------------------------------ inference
def test_infer_predicts_digits(client, digits: Digits):
    """OIP infer returns probabilities whose argmax matches the labels for most of 200 digits."""
    response = client.post("/v2/models/digits/infer", json=infer_body(digits.x[:200]))
    assert response.status_code == 200
    body = response.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1"
    assert body["outputs"][0]["name"] == "probabilities" and body["outputs"][0]["shape"] == [200, 10]
    assert (predicted(response) == digits.y[:200]).mean() > 0.9


def test_infer_versioned_path_and_nested_data(client, digits: Digits):
    """The versioned infer path works and nested (not flat) data is accepted."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": digits.x[:2].tolist()}]}
    response = client.post("/v2/models/digits/versions/1/infer", json=body)
    assert response.status_code == 200
    assert list(predicted(response)) == list(digits.y[:2])


def test_request_id_echo_and_generation(client, digits: Digits):
    """X-Request-ID is echoed (and a body id is returned as 'id'); one is generated when absent."""
    response = client.post("/v2/models/digits/infer", json=infer_body(digits.x[:1]),
                           headers={"X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42" and response.json()["id"] == "req-42"
    response = client.post("/v2/models/digits/infer", json=infer_body(digits.x[:1], id="body-7"))
    assert response.json()["id"] == "body-7"
    generated = client.get("/v2/health/ready").headers["x-request-id"]
    assert len(generated) == 32
    assert response.headers["x-model-version"] == "1"


def test_predictions_json_shapes(client, digits: Digits):
    """/predictions takes a list of rows, one bare row, or an object keyed by input name; /predict is an alias."""
    rows = digits.x[:3].tolist()
    for path, body in (("/predictions/digits", rows), ("/predictions/digits/1", {"input": rows}),
                       ("/predict/digits", rows[0])):
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        probabilities = np.asarray(response.json()["probabilities"])
        assert list(probabilities.argmax(axis=1)) == list(digits.y[:len(probabilities)])


def test_predictions_oip_body(client, digits: Digits):
    """/predictions also accepts a full OIP body."""
    response = client.post("/predictions/digits", json=infer_body(digits.x[:2]))
    assert response.status_code == 200
    assert len(response.json()["probabilities"]) == 2


def test_metrics_exposes_counts_and_histograms(client, digits: Digits):
    """/metrics exports request counts by endpoint and code, latency, queue time, batch size and queue depth."""
    client.post("/v2/models/digits/infer", json=infer_body(digits.x[:1]))
    text = client.get("/metrics").text
    assert metric_samples(text, "pod_requests_total")['pod_requests_total{code="200",endpoint="infer"}'] >= 1
    for family in ("pod_request_latency_seconds_bucket", "pod_queue_time_seconds_bucket", "pod_batch_size_bucket",
                   "pod_queue_depth", "pod_model_info"):
        assert metric_samples(text, family), family


# ------------------------------------------------------------------------------------------ bad input
def bad(client: httpx.Client, content: bytes | str, **kwargs) -> dict:
    """POST to infer, check 400 bad_request, return the error body."""
    response = client.post("/v2/models/digits/infer", content=content, **kwargs)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["reason"] == "bad_request" and body["error"]
    return body


def oip(name="input", datatype="FP32", shape=(1, 64), data=None) -> bytes:
    """An OIP body with one input, any part of which may be wrong."""
    data = [0.0] * 64 if data is None else data
    return orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": data}]})


@pytest.mark.parametrize(("content", "problem"), [
    (b"{not json", "invalid_json"),
    (b'{"inputs": []}', "invalid_request"),
    (oip(name="pixels"), "unknown_input"),
    (oip(datatype="INT64"), "datatype_mismatch"),
    (oip(datatype="FLOAT"), "datatype_mismatch"),
    (oip(shape=(1, 63)), "shape_mismatch"),
    (oip(shape=(64,)), "shape_mismatch"),
    (oip(data=[0.0] * 10), "data_mismatch"),
    (oip(data=["a"] * 64), "data_mismatch"),
])
def test_bad_input_is_400_with_problem(client, content, problem):
    """Malformed JSON, wrong names, datatypes, shapes or data sizes are 400 with a named problem."""
    assert bad(client, content)["details"]["problem"] == problem


def test_oversized_body(client):
    """A body over --max-body-bytes is 400 body_too_large, by Content-Length or while streaming."""
    assert bad(client, b"0" * 300_000)["details"]["problem"] == "body_too_large"

    def chunks():
        for _ in range(30):
            yield b"0" * 10_000

    assert bad(client, chunks())["details"]["problem"] == "body_too_large"


def test_pod_keeps_serving_after_bad_input(client, digits: Digits):
    """After bad requests the pod still answers good ones."""
    bad(client, b"[")
    assert client.post("/v2/models/digits/infer", json=infer_body(digits.x[:1])).status_code == 200


# ------------------------------------------------------------------------------------------ other formats and handlers
def test_state_dict_model_matches_torchscript(module_pods, artifacts: Artifacts, digits: Digits, client):
    """The same weights as state_dict + built-in mlp architecture give the TorchScript model's answers."""
    pod = module_pods(artifacts.digits_sd).wait_ready()
    body = infer_body(digits.x[:20])
    scripted = client.post("/v2/models/digits/infer", json=body).json()["outputs"][0]["data"]
    response = httpx.post(f"{pod.url}/v2/models/digits-sd/versions/3/infer", json=body, timeout=30)
    assert response.status_code == 200
    assert np.allclose(response.json()["outputs"][0]["data"], scripted, atol=1e-5)


@pytest.fixture(scope="module")
def image_pod(module_pods, artifacts: Artifacts) -> Pod:
    """The colour classifier behind the image_classifier handler."""
    return module_pods(artifacts.image).wait_ready()


def test_image_raw_bytes(image_pod: Pod, tiny_images):
    """A raw PNG or JPEG body to /predictions answers top-k labels with the right colour first."""
    for name, expected in (("red", "red"), ("green", "green"), ("blue", "blue"), ("red_jpeg", "red")):
        response = httpx.post(f"{image_pod.url}/predictions/colors", content=tiny_images[name],
                              headers={"Content-Type": "image/png"}, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert len(answer) == 2 and max(answer, key=answer.get) == expected


def test_image_base64_oip(image_pod: Pod, tiny_images):
    """OIP infer with base64 images in a BYTES tensor answers one probability row per image."""
    data = [base64.b64encode(tiny_images[c]).decode() for c in ("blue", "green")]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": data}]}
    response = httpx.post(f"{image_pod.url}/v2/models/colors/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [2, 3]
    assert list(np.asarray(output["data"]).reshape(2, 3).argmax(axis=1)) == [2, 1]


def test_image_not_an_image(image_pod: Pod):
    """Bytes that are not an image are 400 invalid_image."""
    response = httpx.post(f"{image_pod.url}/predictions/colors", content=b"GIF89a-garbage",
                          headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 400 and response.json()["details"]["problem"] == "invalid_image"


def test_text_classifier(module_pods, artifacts: Artifacts):
    """The text classifier tokenizes with the shipped vocabulary and labels sentiment, raw text or OIP BYTES."""
    pod = module_pods(artifacts.text).wait_ready()
    response = httpx.post(f"{pod.url}/predictions/sentiment", content=b"The movies were GREAT!",
                          headers={"Content-Type": "text/plain"}, timeout=30)
    assert response.status_code == 200 and list(response.json()) == ["positive"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["awful movie", "good"]}]}
    output = httpx.post(f"{pod.url}/v2/models/sentiment/infer", json=body, timeout=30).json()["outputs"][0]
    assert list(np.asarray(output["data"]).reshape(2, 2).argmax(axis=1)) == [0, 1]
