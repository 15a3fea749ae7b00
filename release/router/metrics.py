"""The router's Prometheus metrics, on a registry the caller owns (so tests and stacks never share one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RouterMetrics:
    """Prometheus metrics of the router."""

    def __init__(self, registry_: CollectorRegistry) -> None:
        self.registry = registry_
        self.requests = Counter("router_requests", "Requests proxied, by model, version and HTTP code.",
                                ["model", "version", "code"], registry=registry_)
        self.latency = Histogram("router_request_latency_seconds", "Total time in the router per request.",
                                 ["model"], registry=registry_,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.overhead = Histogram("router_overhead_seconds", "Router time outside the upstream call.",
                                  registry=registry_, buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .05))
        self.retries = Counter("router_upstream_retries",
                               "Attempts retried on another pod: connect error or not-ready refusal.",
                               registry=registry_)
        self.dropped = Counter("router_prediction_logs_dropped", "Prediction records dropped: buffer full.",
                               registry=registry_)
        self.cache_age = Gauge("router_route_cache_ttl_seconds", "Upper bound of route staleness.",
                               registry=registry_)
