"""Dynamic batching and failure isolation in a real pod: batches form, errors stay per request, limits hold, drain.

The pod serves a model directory whose handler code (``slow_handler.py``) sleeps for ``parameters.sleep_s``,
raises when ``parameters.fail`` is set and waits for a ``BatchGate`` named by ``parameters.gate``, so load,
faults and in-flight requests can be produced on demand.
"""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
from pod_testkit import Artifacts, BatchGate, Digits, Pod, eventually, infer_body, metric_samples

URL = "/v2/models/slow/infer"


@pytest.fixture(scope="module")
def slow_pod(module_pods, artifacts: Artifacts) -> Pod:
    """Batches of up to 8, gathered for up to 50 ms, 1.5 s request timeout."""
    return module_pods(artifacts.slow, "--max-batch-size", "8", "--max-batch-delay-ms", "50", "--queue-size", "64",
                       "--request-timeout-s", "1.5").wait_ready()


async def send_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body at once, on separate connections."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=len(bodies))) as client:
        return await asyncio.gather(*(client.post(url, json=body) for body in bodies))


def batch_stats(pod: Pod) -> tuple[float, float]:
    """(number of batches, number of requests batched) so far, from the batch-size histogram."""
    samples = metric_samples(httpx.get(f"{pod.url}/metrics").text, "pod_batch_size")
    return samples["pod_batch_size_count"], samples["pod_batch_size_sum"]


def test_concurrent_requests_are_batched(slow_pod: Pod, digits: Digits):
    """16 concurrent requests run in fewer than 16 batches (read from the batch-size histogram) and all succeed."""
    batches_before, requests_before = batch_stats(slow_pod)
    bodies = [infer_body(digits.x[i:i + 1], parameters={"sleep_s": 0.1}) for i in range(16)]
    responses = asyncio.run(send_all(slow_pod.url + URL, bodies))
    assert [r.status_code for r in responses] == [200] * 16
    for i, response in enumerate(responses):
        probabilities = response.json()["outputs"][0]["data"]
        assert probabilities.index(max(probabilities)) == digits.y[i]
    batches_after, requests_after = batch_stats(slow_pod)
    assert requests_after - requests_before == 16
    assert batches_after - batches_before < 16


def test_handler_exception_fails_only_that_request(slow_pod: Pod, digits: Digits):
    """A handler exception answers 500 handler_error to the bad request only; its batch-mates get 200."""
    bodies = [infer_body(digits.x[i:i + 1], parameters={"sleep_s": 0.05}) for i in range(6)]
    bodies[3] = infer_body(digits.x[3:4], parameters={"fail": True})
    responses = asyncio.run(send_all(slow_pod.url + URL, bodies))
    codes = [r.status_code for r in responses]
    assert codes == [200, 200, 200, 500, 200, 200]
    assert responses[3].json()["reason"] == "handler_error"
    assert "asked to fail" in responses[3].json()["error"]
    assert httpx.post(slow_pod.url + URL, json=infer_body(digits.x[:1])).status_code == 200


def test_request_timeout_is_504(slow_pod: Pod, digits: Digits):
    """A request not answered within --request-timeout-s gets 504 request_timeout."""
    response = httpx.post(slow_pod.url + URL, json=infer_body(digits.x[:1], parameters={"sleep_s": 2.0}),
                          timeout=30)
    assert response.status_code == 504
    assert response.json()["reason"] == "request_timeout"


def test_full_queue_is_429_with_retry_after(start_pod, artifacts: Artifacts, digits: Digits):
    """With one-request batches and a queue of 2, a burst of 10 gets 429 queue_full with Retry-After."""
    pod = start_pod(artifacts.slow, "--max-batch-size", "1", "--queue-size", "2").wait_ready()
    bodies = [infer_body(digits.x[:1], parameters={"sleep_s": 0.3}) for _ in range(10)]
    responses = asyncio.run(send_all(pod.url + URL, bodies))
    refused = [r for r in responses if r.status_code == 429]
    assert refused and sum(r.status_code == 200 for r in responses) >= 2
    assert all(r.json()["reason"] == "queue_full" and r.headers["retry-after"] == "1" for r in refused)


def test_sigterm_drains_in_flight_requests(start_pod, artifacts: Artifacts, digits: Digits,
                                           batch_gate: BatchGate):
    """On SIGTERM readiness turns 503, new requests get 503 not_ready, the in-flight one completes, exit 0."""
    pod = start_pod(artifacts.slow).wait_ready()

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=pod.url, timeout=30) as client:
            in_flight = asyncio.create_task(
                client.post(URL, json=infer_body(digits.x[:1], parameters={"gate": str(batch_gate.path)})))

            def gauge() -> float:
                return metric_samples(httpx.get(f"{pod.url}/metrics").text, "pod_in_flight_requests")[
                    "pod_in_flight_requests"]

            assert await asyncio.to_thread(eventually, gauge, lambda value: value >= 1) >= 1
            pod.process.send_signal(signal.SIGTERM)
            ready = await asyncio.to_thread(eventually, lambda: httpx.get(f"{pod.url}/v2/health/ready").status_code,
                                            lambda code: code == 503)
            assert ready == 503
            late = await client.post(URL, json=infer_body(digits.x[:1]))
            ping = await client.get("/ping")
            batch_gate.release()  # the held request answers only now, while the pod drains
            return await in_flight, late, ping

    finished, late, ping = asyncio.run(scenario())
    assert finished.status_code == 200
    assert late.status_code == 503 and late.json()["reason"] == "not_ready"
    assert ping.status_code == 503
    assert pod.wait_exit(timeout_s=30) == 0
    assert "pod.draining" in pod.log
