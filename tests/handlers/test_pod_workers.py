"""``--http-workers 2``: two HTTP front processes before one model process, on the CPU, over real HTTP.

Every endpoint still answers; concurrent clients land on both fronts (``X-Pod-Worker`` names the front's pid) yet
their requests share batches (the batch-size histogram on ``/metrics`` covers the whole pod); a handler exception
fails only its request; SIGTERM to the parent drains every front and the pod exits 0.
"""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
from pod_testkit import Artifacts, BatchGate, Digits, Pod, eventually, infer_body, metric_samples

URL = "/v2/models/slow/infer"


@pytest.fixture(scope="module")
def workers_pod(module_pods, artifacts: Artifacts) -> Pod:
    """The slow handler behind two fronts: batches of up to 8, gathered for up to 50 ms."""
    return module_pods(artifacts.slow, "--http-workers", "2", "--max-batch-size", "8", "--max-batch-delay-ms",
                       "50", "--request-timeout-s", "5").wait_ready()


async def send_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body at once, each on its own connection (so the kernel spreads them over the fronts)."""
    async def one(body: dict) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(url, json=body)

    return await asyncio.gather(*(one(body) for body in bodies))


def test_all_endpoints_answer(workers_pod: Pod, digits: Digits):
    """Health, metadata, readiness, ping, infer, predictions and metrics all answer 200 through the fronts."""
    with httpx.Client(base_url=workers_pod.url, timeout=30) as client:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/slow", "/v2/models/slow/ready",
                     "/v2/models/slow/versions/7/ready", "/ping", "/metrics"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["x-pod-worker"].isdigit()
        response = client.post(URL, json=infer_body(digits.x[:3]), headers={"X-Request-ID": "w-1"})
        assert response.status_code == 200 and response.json()["id"] == "w-1"
        assert response.json()["outputs"][0]["shape"] == [3, 10]
        response = client.post("/predictions/slow", json=digits.x[:2].tolist())
        assert response.status_code == 200 and len(response.json()["probabilities"]) == 2
        response = client.post(URL, content=b"{not json")
        assert response.status_code == 400 and response.json()["details"]["problem"] == "invalid_json"
        assert client.post("/v2/models/other/infer", json=infer_body(digits.x[:1])).status_code == 404


def test_requests_spread_over_fronts_and_share_batches(workers_pod: Pod, digits: Digits):
    """Concurrent clients reach both fronts, and the pod-wide batch-size histogram shows batches of > 1."""

    def stats() -> dict[str, float]:
        return metric_samples(httpx.get(f"{workers_pod.url}/metrics").text, "pod_")

    before = stats()
    bodies = [infer_body(digits.x[i:i + 1], parameters={"sleep_s": 0.1}) for i in range(24)]
    responses = asyncio.run(send_all(workers_pod.url + URL, bodies))
    assert [r.status_code for r in responses] == [200] * 24
    for i, response in enumerate(responses):
        probabilities = response.json()["outputs"][0]["data"]
        assert probabilities.index(max(probabilities)) == digits.y[i]
    assert len({r.headers["x-pod-worker"] for r in responses}) == 2
    after = stats()
    batches = after["pod_batch_size_count"] - before["pod_batch_size_count"]
    assert after["pod_batch_size_sum"] - before["pod_batch_size_sum"] == 24
    assert batches < 24
    counted = 'pod_requests_total{code="200",endpoint="infer"}'
    assert after[counted] - before.get(counted, 0) == 24  # exact at once: the fronts count in shared memory


def test_handler_exception_fails_only_that_request(workers_pod: Pod, digits: Digits):
    """A handler exception answers 500 handler_error to the bad request only, whichever front it came through."""
    bodies = [infer_body(digits.x[i:i + 1], parameters={"sleep_s": 0.05}) for i in range(6)]
    bodies[3] = infer_body(digits.x[3:4], parameters={"fail": True})
    responses = asyncio.run(send_all(workers_pod.url + URL, bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 500, 200, 200]
    assert responses[3].json()["reason"] == "handler_error"
    assert "asked to fail" in responses[3].json()["error"]


def test_full_queue_and_timeout_cross_processes(start_pod, artifacts: Artifacts, digits: Digits):
    """The model process's queue_full refusal and a front's request timeout keep their status codes."""
    pod = start_pod(artifacts.slow, "--http-workers", "2", "--max-batch-size", "1", "--queue-size", "1",
                    "--request-timeout-s", "1").wait_ready()
    bodies = [infer_body(digits.x[:1], parameters={"sleep_s": 0.4}) for _ in range(8)]
    codes = sorted(r.status_code for r in asyncio.run(send_all(pod.url + URL, bodies)))
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429, 504}
    late = httpx.post(pod.url + URL, json=infer_body(digits.x[:1], parameters={"sleep_s": 2.0}), timeout=30)
    assert late.status_code == 504 and late.json()["reason"] == "request_timeout"


def test_sigterm_drains_every_front_and_exits_0(start_pod, artifacts: Artifacts, digits: Digits,
                                                batch_gate: BatchGate):
    """On SIGTERM to the parent, readiness turns 503, in-flight requests on the fronts complete, exit code 0."""
    pod = start_pod(artifacts.slow, "--http-workers", "2").wait_ready()

    async def scenario() -> list[httpx.Response]:
        bodies = [infer_body(digits.x[:1], parameters={"gate": str(batch_gate.path)}) for _ in range(6)]
        in_flight = asyncio.ensure_future(send_all(pod.url + URL, bodies))

        def gauge() -> float:
            return metric_samples(httpx.get(f"{pod.url}/metrics").text, "pod_in_flight_requests")[
                "pod_in_flight_requests"]

        await asyncio.to_thread(eventually, gauge, lambda value: value >= 6)
        pod.process.send_signal(signal.SIGTERM)
        ready = await asyncio.to_thread(eventually, lambda: httpx.get(f"{pod.url}/v2/health/ready").status_code,
                                        lambda code: code == 503)
        assert ready == 503
        batch_gate.release()  # the held requests answer only now, while the fronts drain
        return await in_flight

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.headers["x-pod-worker"] for r in responses}) >= 1
    assert pod.wait_exit(timeout_s=30) == 0
    assert pod.log.count("pod.front_stopped") == 2 and "pod.stopped" in pod.log
