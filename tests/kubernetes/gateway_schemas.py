"""Strict JSON schemas of the Gateway API v1 (and GKE HealthCheckPolicy) fields we write.

kubernetes-validate bundles only built-in kinds, so these CRDs are checked here instead: the fields of
``gateway.networking.k8s.io/v1`` HTTPRoute and Gateway that the project uses, with the CRDs' own limits
(counts, lengths, enums, patterns), and nothing else allowed, so a misspelt or misplaced field fails.
"""

from __future__ import annotations

from typing import Any

_DNS_SUBDOMAIN = {"type": "string", "minLength": 1, "maxLength": 253,
                  "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}
_HOSTNAME = {"type": "string", "minLength": 1, "maxLength": 253,
             "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}
# The CRD's rule for path values: absolute, no empty, "." or ".." segments, no encoded slash.
_PATH = {"type": "string", "maxLength": 1024, "pattern": r"^/", "not": {"pattern": r"//|/\./|/\.\./|/\.$|%2[fF]"}}
_METADATA = {"type": "object", "required": ["name", "namespace"],
             "properties": {"name": _DNS_SUBDOMAIN, "namespace": _DNS_SUBDOMAIN}}


def _strict(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


_PARENT_REF = _strict(["name"], group={"const": "gateway.networking.k8s.io"}, kind={"const": "Gateway"},
                      name=_DNS_SUBDOMAIN, namespace=_DNS_SUBDOMAIN, sectionName=_DNS_SUBDOMAIN)
_BACKEND_REF = _strict(["name", "port"], group={"const": ""}, kind={"const": "Service"}, name=_DNS_SUBDOMAIN,
                       port={"type": "integer", "minimum": 1, "maximum": 65535},
                       weight={"type": "integer", "minimum": 0, "maximum": 1000000})
_MATCH = _strict(["path"], path=_strict(["type", "value"], type={"enum": ["Exact", "PathPrefix"]}, value=_PATH))
_URL_REWRITE = _strict(["type", "urlRewrite"], type={"const": "URLRewrite"}, urlRewrite=_strict(
    ["path"], path=_strict(["type", "replaceFullPath"], type={"const": "ReplaceFullPath"}, replaceFullPath=_PATH)))
_RULE = _strict(["backendRefs"],
                matches={"type": "array", "minItems": 1, "maxItems": 64, "items": _MATCH},
                filters={"type": "array", "maxItems": 16, "items": _URL_REWRITE},
                backendRefs={"type": "array", "minItems": 1, "maxItems": 16, "items": _BACKEND_REF})

HTTPROUTE_SCHEMA = _strict(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "gateway.networking.k8s.io/v1"}, kind={"const": "HTTPRoute"}, metadata=_METADATA,
    spec=_strict(["parentRefs", "rules"],
                 parentRefs={"type": "array", "minItems": 1, "maxItems": 32, "items": _PARENT_REF},
                 hostnames={"type": "array", "maxItems": 16, "items": _HOSTNAME},
                 rules={"type": "array", "minItems": 1, "maxItems": 16, "items": _RULE}),
)

GATEWAY_SCHEMA = _strict(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "gateway.networking.k8s.io/v1"}, kind={"const": "Gateway"}, metadata=_METADATA,
    spec=_strict(["gatewayClassName", "listeners"], gatewayClassName=_DNS_SUBDOMAIN, listeners={
        "type": "array", "minItems": 1, "maxItems": 64, "items": _strict(
            ["name", "port", "protocol"], name=_DNS_SUBDOMAIN,
            port={"type": "integer", "minimum": 1, "maximum": 65535}, protocol={"enum": ["HTTP", "HTTPS"]},
            hostname=_HOSTNAME, allowedRoutes=_strict([], namespaces=_strict(
                ["from"], **{"from": {"enum": ["All", "Same", "Selector"]}})))}),
)

HEALTHCHECKPOLICY_SCHEMA = _strict(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "networking.gke.io/v1"}, kind={"const": "HealthCheckPolicy"}, metadata=_METADATA,
    spec=_strict(["default", "targetRef"],
                 default=_strict(["config"], config=_strict(
                     ["type"], type={"enum": ["HTTP", "HTTPS", "HTTP2", "TCP", "GRPC"]},
                     httpHealthCheck=_strict([], port={"type": "integer", "minimum": 1, "maximum": 65535},
                                             requestPath=_PATH))),
                 targetRef=_strict(["group", "kind", "name"], group={"const": ""}, kind={"const": "Service"},
                                   name=_DNS_SUBDOMAIN)),
)

#: Schemas of the custom kinds we render or ship, by kind.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "HTTPRoute": HTTPROUTE_SCHEMA,
    "Gateway": GATEWAY_SCHEMA,
    "HealthCheckPolicy": HEALTHCHECKPOLICY_SCHEMA,
}
