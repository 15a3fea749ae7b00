"""Gateway API routes in the cluster: the Kubernetes ``RouteWriter`` of ``release.route_sync``.

``apply(model, routes)`` server-side applies what ``k8s_routes`` renders (HTTPRoutes and the HealthCheckPolicies
of their Services; one field manager, ``force``), then deletes the model's objects of those kinds that the render
no longer has: the route of an alias that was unset, the health check of a Service no longer routed to. Which
objects are the model's is read from the ``modelrelease.dev/model`` annotation (exact, where labels are mapped), so
a server that ignores label selectors cannot make it delete another model's routes.

As in ``kubernetes_serving``, an apply answered 404 (a server that does not create on apply) is followed by a
create, and every API call runs in ``k8s_errors.api_errors``: 429/5xx/no answer are ``TemporaryError`` (the
event is redelivered), refusals ``PermanentError``. A 404 on create means the CRD is missing: the Gateway API
is not enabled on the cluster (``deploy/gcp/setup.sh`` enables it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from release.adapters.k8s_errors import api_errors
from release.adapters.k8s_names import PART_OF
from release.adapters.k8s_routes import (
    GATEWAY_GROUP,
    HEALTH_CHECK_GROUP,
    MODEL_ANNOTATION,
    ROUTE_COMPONENT,
    GatewayRef,
    render_routes,
)
from release.adapters.kubernetes_serving import default_client
from release.route_sync import AliasRoute
from schemas.errors import PermanentError, Reason

_APPLY_PATCH = "application/apply-patch+yaml"
# kind -> (group, version, plural)
_KINDS: dict[str, tuple[str, str, str]] = {
    "HTTPRoute": (GATEWAY_GROUP, "v1", "httproutes"),
    "HealthCheckPolicy": (HEALTH_CHECK_GROUP, "v1", "healthcheckpolicies"),
}


class GatewayRouteWriter:
    """Applies a model's HTTPRoutes (attached to one Gateway) in one namespace."""

    def __init__(self, *, namespace: str, gateway: GatewayRef, api_client: client.ApiClient | None = None,
                 field_manager: str = "model-release", request_timeout_s: float = 30.0) -> None:
        """Use ``api_client`` when given; else in-cluster credentials, else the default kubeconfig."""
        self._owns_client = api_client is None
        self._api = api_client or default_client()
        self._namespace = namespace
        self._gateway = gateway
        self._custom = client.CustomObjectsApi(self._api)
        self._field_manager = field_manager
        self._timeout = request_timeout_s

    def apply(self, model: str, routes: Sequence[AliasRoute]) -> None:
        """Make the model's routes exactly ``routes``; idempotent."""
        manifests = render_routes(routes, namespace=self._namespace, gateway=self._gateway)
        for manifest in manifests:
            self._apply(manifest)
        wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
        for kind in _KINDS:
            for name in self._names_of(kind, model):
                if (kind, name) not in wanted:
                    self._delete(kind, name)

    def close(self) -> None:
        """Close the API client when this writer made it."""
        if self._owns_client:
            self._api.close()  # type: ignore[no-untyped-call]

    def _apply(self, manifest: dict[str, Any]) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        group, version, plural = _KINDS[kind]
        with api_errors(f"applying {kind} {name}"):
            try:
                self._custom.patch_namespaced_custom_object(
                    group, version, self._namespace, plural, name, manifest, field_manager=self._field_manager,
                    force=True, _content_type=_APPLY_PATCH, _request_timeout=self._timeout)
                return
            except ApiException as e:
                if e.status != 404:
                    raise
            try:
                self._custom.create_namespaced_custom_object(
                    group, version, self._namespace, plural, manifest, field_manager=self._field_manager,
                    _request_timeout=self._timeout)
            except ApiException as e:
                if e.status == 404:
                    raise _missing_crd(kind, group) from e
                raise

    def _names_of(self, kind: str, model: str) -> list[str]:
        group, version, plural = _KINDS[kind]
        with api_errors(f"listing {kind} objects of {model}"):
            try:
                listed: Any = self._custom.list_namespaced_custom_object(
                    group, version, self._namespace, plural,
                    label_selector=f"app.kubernetes.io/component={ROUTE_COMPONENT},app.kubernetes.io/managed-by={PART_OF}",
                    _request_timeout=self._timeout)
            except ApiException as e:
                if e.status == 404:  # nothing of the kind can exist: its CRD is not installed
                    return []
                raise
        return [item["metadata"]["name"] for item in listed.get("items", [])
                if (item["metadata"].get("annotations") or {}).get(MODEL_ANNOTATION) == model]

    def _delete(self, kind: str, name: str) -> None:
        group, version, plural = _KINDS[kind]
        with api_errors(f"deleting {kind} {name}"):
            try:
                self._custom.delete_namespaced_custom_object(group, version, self._namespace, plural, name,
                                                             _request_timeout=self._timeout)
            except ApiException as e:
                if e.status != 404:  # already gone
                    raise


def _missing_crd(kind: str, group: str) -> PermanentError:
    return PermanentError(
        f"The cluster does not serve {kind} ({group}): its CRD is not installed",
        reason=Reason.ROLLOUT_FAILED,
        hint="Enable the Gateway API on the cluster (deploy/gcp/setup.sh does: "
             "gcloud container clusters update CLUSTER --gateway-api=standard), or unset RELEASE_GATEWAY.",
        details={"kind": kind, "group": group},
    )
