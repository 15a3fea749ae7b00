"""The pod's Prometheus metrics, on a registry of its own (no process-wide default registry).

``pod_queue_time_seconds`` is the signal an autoscaler scales on: how long requests wait for a batch slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENDPOINTS = ("health", "metadata", "infer", "predictions", "metrics")  # the ``endpoint`` label's values


@dataclass(frozen=True, kw_only=True)
class PodMetrics:
    """Every metric the pod exports."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    queue_time: Histogram
    batch_size: Histogram
    batch_seconds: Histogram
    queue_depth: Gauge
    in_flight: Gauge
    gpu_memory: Gauge
    handoff: Counter
    handoff_blocks: Gauge


def create_metrics(*, model: str, version: str, device: torch.device,
                   request_counts: Collector | None = None) -> PodMetrics:
    """A fresh registry with the pod's metrics; GPU memory is read at scrape time when on CUDA.

    ``request_counts`` exports ``pod_requests`` and ``pod_request_latency_seconds`` when other processes answer
    HTTP (``FrontCounters.requests``); this process's own ``requests`` and ``latency`` then stay unexported.
    """
    registry = CollectorRegistry(auto_describe=True)
    if request_counts is not None:
        registry.register(request_counts)
    own_requests = registry if request_counts is None else None
    info = Gauge("pod_model_info", "The model this pod serves (value is always 1).",
                 ["model", "version", "device"], registry=registry)
    info.labels(model, version, device.type).set(1)
    gpu_memory = Gauge("pod_gpu_memory_bytes", "CUDA memory held by the model server.", ["kind"],
                       registry=registry)
    if device.type == "cuda":
        gpu_memory.labels("allocated").set_function(lambda: torch.cuda.memory_allocated(device))
        gpu_memory.labels("reserved").set_function(lambda: torch.cuda.memory_reserved(device))
    return PodMetrics(
        registry=registry,
        requests=Counter("pod_requests", "Requests answered, by endpoint and HTTP status code.",
                         ["endpoint", "code"], registry=own_requests),
        latency=Histogram("pod_request_latency_seconds", "Time from request arrival to response, by endpoint.",
                          ["endpoint"], buckets=LATENCY_BUCKETS, registry=own_requests),
        queue_time=Histogram("pod_queue_time_seconds", "Time a request waited in the queue before its batch ran.",
                             buckets=LATENCY_BUCKETS, registry=registry),
        batch_size=Histogram("pod_batch_size", "Requests per batch the model ran.", buckets=_BATCH_BUCKETS,
                             registry=registry),
        batch_seconds=Histogram("pod_batch_seconds", "Time the handler took per batch.",
                                buckets=LATENCY_BUCKETS, registry=registry),
        queue_depth=Gauge("pod_queue_depth", "Requests waiting for a batch slot.", registry=registry),
        in_flight=Gauge("pod_in_flight_requests", "Inference requests received and not yet answered.",
                        registry=registry),
        gpu_memory=gpu_memory,
        handoff=Counter("pod_handoff_requests", "Requests whose tensors crossed from an HTTP front to the model "
                        "process, by path: shared_memory (the front's arena) or pipe (they did not fit).",
                        ["path"], registry=registry),
        handoff_blocks=Gauge("pod_handoff_blocks_in_use", "Arena blocks the HTTP fronts hold for requests the "
                             "model process has not answered yet.", registry=registry),
    )
