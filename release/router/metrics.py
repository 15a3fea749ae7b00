"""The router's Prometheus metrics, on a registry the caller owns (so tests and stacks never share one).

Label values come from the registry, never from the client: a model name the route table does not know is
counted as ``UNKNOWN_MODEL``, so clients sending made-up names cannot grow the number of series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.errors import Reason, ReleaseError

#: The one ``model`` label of requests for models that are not registered. Parentheses cannot occur in a model
#: name (``schemas.manifest.NAME_PATTERN``), so it never merges with a real model's series.
UNKNOWN_MODEL = "(unknown)"

#: Route-table refusals raised only after the model itself was found. Any other refusal (an unknown model, an
#: outage before the model was read) may carry a made-up name, so it is counted as ``UNKNOWN_MODEL``.
_MODEL_FOUND = frozenset({Reason.VERSION_NOT_FOUND, Reason.ALIAS_NOT_FOUND, Reason.NOT_READY})


def model_label(model: str, refusal: ReleaseError | None = None) -> str:
    """The ``model`` label of a request: its model's name once the registry has vouched for it, else unknown."""
    if refusal is None or refusal.reason in _MODEL_FOUND:
        return model
    return UNKNOWN_MODEL


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
