"""The one table from our error hierarchy to HTTP status, and the OIP error body the pod answers with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from schemas.errors import BadRequest, NotFound, Reason, ReleaseError, TemporaryError

HTTP_STATUS_BY_REASON: Mapping[Reason, int] = {
    Reason.BAD_REQUEST: 400,
    Reason.MODEL_NOT_FOUND: 404,
    Reason.VERSION_NOT_FOUND: 404,
    Reason.HANDLER_ERROR: 500,
    Reason.MODEL_LOAD_FAILED: 500,
    Reason.INTERNAL: 500,
    Reason.QUEUE_FULL: 503,
    Reason.NOT_READY: 503,
    Reason.UNAVAILABLE: 503,
    Reason.REQUEST_TIMEOUT: 504,
}
# Reasons not in the table fall back to the error's class, most specific first.
HTTP_STATUS_BY_CLASS: tuple[tuple[type[ReleaseError], int], ...] = (
    (BadRequest, 400), (NotFound, 404), (TemporaryError, 503), (ReleaseError, 500),
)


def http_status(error: ReleaseError) -> int:
    """The HTTP status an error is answered with."""
    status = HTTP_STATUS_BY_REASON.get(error.reason)
    if status is not None:
        return status
    return next(code for cls, code in HTTP_STATUS_BY_CLASS if isinstance(error, cls))


def error_body(error: ReleaseError) -> dict[str, Any]:
    """OIP's ``{"error": message}``, plus our stable ``reason``, a ``hint`` and any ``details``."""
    body: dict[str, Any] = {"error": error.message, "reason": str(error.reason), "hint": error.hint}
    if error.details:
        body["details"] = error.details
    return body


def retry_after(error: ReleaseError) -> str | None:
    """A ``Retry-After`` value (whole seconds) for temporary refusals."""
    if isinstance(error, TemporaryError) and error.reason is not Reason.REQUEST_TIMEOUT:
        return str(max(1, math.ceil(error.delay)))
    return None
