"""Render a model's Gateway API routes: one HTTPRoute per alias, plus a HealthCheckPolicy per Service they send to.

Pure, like ``k8s_manifests``: plain data in, plain dicts out, no ``kubernetes`` import and no I/O, so
``release deploy routes`` prints exactly what ``gateway_routes`` applies.

Matching mirrors the Python router's URLs, so a client moves between the router and the Gateway by changing
the host alone. For a model ``M`` (percent-encoded in paths when it has characters a URL path cannot carry) and
an alias ``A``, the route of ``A`` matches these exact paths and sends each to the pods' own unversioned path:

* ``/v2/models/M/versions/A/infer`` → ``/v2/models/M/infer`` (Open Inference Protocol);
* ``/predictions/M/A`` → ``/predictions/M`` and ``/predict/M/A`` → ``/predict/M`` (TorchServe style);
* the route of ``PROD`` also takes the unversioned paths themselves (``/v2/models/M/infer``, ``/predictions/M``,
  ``/predict/M``), as the router does.

Hostnames are the optional ``RELEASE_GATEWAY_HOSTNAMES``; without them the routes match every hostname of the
Gateway's listener. The backends are the versions' Services (``k8s_names.object_name``) on the pods' port,
weighted as ``release.route_sync`` computed: PROD carries the canary split.

GKE's Gateway health-checks a backend with ``GET /`` unless a ``HealthCheckPolicy`` says otherwise, and the pods
answer 404 there; so each routed Service gets one pointing at ``/v2/health/ready``, the readiness probe's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from release.adapters.k8s_manifests import SERVER_PORT, Manifest
from release.adapters.k8s_names import PART_OF, label_value, object_name
from release.route_sync import AliasRoute
from schemas.errors import PermanentError, Reason

GATEWAY_GROUP = "gateway.networking.k8s.io"
HEALTH_CHECK_GROUP = "networking.gke.io"
ROUTE_COMPONENT = "routing"
MODEL_ANNOTATION = "modelrelease.dev/model"
ALIAS_ANNOTATION = "modelrelease.dev/alias"
VERSION_ANNOTATION = "modelrelease.dev/version"
_READY_PATH = "/v2/health/ready"


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway the routes attach to, and the hostnames they match (none: all of the listener's)."""

    name: str
    namespace: str
    hostnames: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str, *, hostnames: str = "") -> GatewayRef:
        """``NAME/NAMESPACE`` (the form of ``RELEASE_GATEWAY``) and a comma-separated hostname list."""
        name, _, namespace = value.strip().partition("/")
        if not name or not namespace or "/" in namespace:
            raise PermanentError(f"Gateway {value!r} is not NAME/NAMESPACE", reason=Reason.BAD_REQUEST,
                                 hint="Set RELEASE_GATEWAY (or --gateway) to the Gateway's name and namespace, "
                                      "e.g. release-gateway/model-release.")
        return cls(name=name, namespace=namespace,
                   hostnames=tuple(h.strip() for h in hostnames.split(",") if h.strip()))


def route_name(model: str, alias: str) -> str:
    """The HTTPRoute of one alias: a DNS label unique per (model, alias), distinct from any version's name."""
    return object_name(model, f"route-{alias}")


def _labels(model: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": ROUTE_COMPONENT,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": PART_OF,
        "modelrelease.dev/model": label_value(model),
        **{f"modelrelease.dev/{key}": label_value(value) for key, value in extra.items()},
    }


def _rule(paths: Sequence[str], backends: list[dict[str, Any]], *, rewrite: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"matches": [{"path": {"type": "Exact", "value": path}} for path in paths]}
    if rewrite is not None:
        rule["filters"] = [{"type": "URLRewrite",
                            "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": rewrite}}}]
    rule["backendRefs"] = backends
    return rule


def _rules(route: AliasRoute) -> list[dict[str, Any]]:
    model, alias = quote(route.model, safe="-._~"), quote(route.alias, safe="-._~")
    backends = [{"kind": "Service", "name": object_name(route.model, b.version), "port": SERVER_PORT,
                 "weight": b.weight} for b in route.backends]
    plain = {"v2": f"/v2/models/{model}/infer", "predictions": f"/predictions/{model}", "predict": f"/predict/{model}"}
    rules = [_rule([plain["v2"], plain["predictions"], plain["predict"]], backends)] if route.alias == "PROD" else []
    rules += [
        _rule([f"/v2/models/{model}/versions/{alias}/infer"], backends, rewrite=plain["v2"]),
        _rule([f"/predictions/{model}/{alias}"], backends, rewrite=plain["predictions"]),
        _rule([f"/predict/{model}/{alias}"], backends, rewrite=plain["predict"]),
    ]
    return rules


def render_route(route: AliasRoute, *, namespace: str, gateway: GatewayRef) -> Manifest:
    """The HTTPRoute of one alias."""
    spec: dict[str, Any] = {"parentRefs": [{"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name,
                                            "namespace": gateway.namespace}]}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    spec["rules"] = _rules(route)
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": route_name(route.model, route.alias), "namespace": namespace,
                     "labels": _labels(route.model, alias=route.alias),
                     "annotations": {MODEL_ANNOTATION: route.model, ALIAS_ANNOTATION: route.alias}},
        "spec": spec,
    }


def render_health_check(model: str, version: str, *, namespace: str) -> Manifest:
    """The GKE HealthCheckPolicy of one version's Service: the load balancer probes readiness, not ``/``."""
    name = object_name(model, version)
    return {
        "apiVersion": f"{HEALTH_CHECK_GROUP}/v1",
        "kind": "HealthCheckPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(model, version=version),
                     "annotations": {MODEL_ANNOTATION: model, VERSION_ANNOTATION: version}},
        "spec": {
            "default": {"config": {"type": "HTTP",
                                   "httpHealthCheck": {"port": SERVER_PORT, "requestPath": _READY_PATH}}},
            "targetRef": {"group": "", "kind": "Service", "name": name},
        },
    }


def render_routes(routes: Sequence[AliasRoute], *, namespace: str, gateway: GatewayRef) -> list[Manifest]:
    """Every object that routes a model as ``routes`` say: the HTTPRoutes, then one health check per Service."""
    versions = sorted({(r.model, b.version) for r in routes for b in r.backends})
    return [*(render_route(r, namespace=namespace, gateway=gateway) for r in routes),
            *(render_health_check(model, version, namespace=namespace) for model, version in versions)]
