"""The router's Prometheus metrics, on a registry the caller owns (so tests and stacks never share one).

Label values come from the registry, never from the client: a model name the route table does not know is
counted as ``UNKNOWN_MODEL``, so clients sending made-up names cannot grow the number of series.

The request path goes through ``count`` and ``observe``, which keep each label set's child once made: a request
costs a dict lookup per series, not a label-set build and check (the label sets are bounded by the registry).
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
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def count(self, model: str, version: str, code: int) -> None:
        """Count one answer; ``model`` is a label already checked against the registry (``model_label``)."""
        child = self._counted.get((model, version, code))
        if child is None:
            child = self._counted[model, version, code] = self.requests.labels(model, version, str(code))
        child.inc()

    def observe(self, model: str, *, total_s: float, upstream_s: float) -> None:
        """Time one proxied request: its total, and the router's own share outside the upstream call."""
        child = self._timed.get(model)
        if child is None:
            child = self._timed[model] = self.latency.labels(model)
        child.observe(total_s)
        self.overhead.observe(max(0.0, total_s - upstream_s))
