"""Kubernetes API errors as our errors: what may be retried, and what a person must fix.

429, 5xx and connection failures become ``TemporaryError`` (redeliver later, after ``Retry-After`` when the
server sends one); other API refusals (409 field conflicts, 422 invalid objects, 403 missing RBAC) become
``PermanentError(ROLLOUT_FAILED)`` with a hint. The serving backend wraps each API call in ``api_errors``,
so vendor errors never leave the adapters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from schemas.errors import PermanentError, Reason, ReleaseError, TemporaryError

# Why an API refusal cannot be retried, and what a person does about it.
_HINTS: dict[int, str] = {
    401: "The control plane's credentials were refused: check its kubeconfig or service account token.",
    403: "The control plane's service account lacks RBAC for this: apply deploy/k8s/rbac.yaml.",
    404: "The namespace or the PodMonitoring CRD is missing: create the namespace, or install Google "
         "Managed Prometheus, or render without PodMonitoring.",
    409: "Another field manager owns fields of this object: remove that manager's edits.",
    422: "The API server rejected the rendered object: print it with the CLI and check the serving options.",
}


def _api_message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(error.reason or "no reason given")


def _retry_after(error: ApiException) -> float:
    value = (error.headers or {}).get("Retry-After")
    try:
        return max(1.0, float(value)) if value is not None else 5.0
    except ValueError:
        return 5.0


def translate(error: ApiException, *, doing: str) -> ReleaseError:
    """``TemporaryError`` for 429, 5xx and no answer at all; ``PermanentError(ROLLOUT_FAILED)`` with a hint else."""
    status = int(error.status or 0)
    message = f"Kubernetes API answered {status or 'nothing'} while {doing}: {_api_message(error)}"
    details = {"status": status, "doing": doing}
    if status == 0 or status == 429 or status >= 500:
        return TemporaryError(message, delay=_retry_after(error), details=details)
    return PermanentError(message, reason=Reason.ROLLOUT_FAILED, details=details,
                          hint=_HINTS.get(status, "Read the API server's message above."))


@contextmanager
def api_errors(doing: str) -> Iterator[None]:
    """Run the block, raising our errors (chained) for the client's API and connection errors."""
    try:
        yield
    except ApiException as e:
        raise translate(e, doing=doing) from e
    except HTTPError as e:
        raise TemporaryError(f"Kubernetes API unreachable while {doing}: {e}", delay=10.0,
                             details={"doing": doing}) from e
