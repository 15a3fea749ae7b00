"""The one table from an error to what every speaker of HTTP and every consumer of a bus does with it.

Pure data, so the serving pod (which imports nothing of the control plane) answers with the same status as the
router, the management API and the functions. Two questions, answered here once:

* **Which HTTP status?** The error's reason first (``STATUS_BY_REASON``), then its class, most specific first
  (``STATUS_BY_CLASS``). A full queue is 429 everywhere, with ``Retry-After``; Pub/Sub push and Eventarc redeliver
  on 429 and 5xx and drop other 4xx, so the status is also what a pushed event's fate hangs on.
* **Settle or redeliver?** A ``PermanentError`` is settled (acknowledged, recorded); a ``TemporaryError`` is
  redelivered after its ``delay``; anything else is a bug or an outage and is redelivered with backoff until the
  bus dead-letters it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from schemas.errors import (
    AliasConflict,
    ArtifactRejected,
    BadRequest,
    InvalidTransition,
    NotFound,
    PermanentError,
    Reason,
    ReleaseError,
    TemporaryError,
    Unauthorized,
)

STATUS_BY_REASON: Mapping[Reason, int] = {
    Reason.BAD_REQUEST: 400,
    Reason.EVENT_INVALID: 400,
    Reason.UNAUTHORIZED: 401,
    Reason.MODEL_NOT_FOUND: 404,
    Reason.VERSION_NOT_FOUND: 404,
    Reason.ALIAS_NOT_FOUND: 404,
    Reason.ALIAS_CONFLICT: 409,
    Reason.INVALID_TRANSITION: 409,
    Reason.BODY_TOO_LARGE: 413,
    Reason.QUEUE_FULL: 429,
    Reason.RESCHEDULED: 429,
    Reason.HANDLER_ERROR: 500,
    Reason.MODEL_LOAD_FAILED: 500,
    Reason.INTERNAL: 500,
    Reason.NOT_READY: 503,
    Reason.UNAVAILABLE: 503,
    Reason.REQUEST_TIMEOUT: 504,
}

# Reasons not in the table above fall back to the error's class, most specific first.
STATUS_BY_CLASS: tuple[tuple[type[ReleaseError], int], ...] = (
    (InvalidTransition, 409),
    (AliasConflict, 409),
    (NotFound, 404),
    (Unauthorized, 401),
    (BadRequest, 400),
    (TemporaryError, 503),
    (PermanentError, 422),
    (ReleaseError, 500),
)

#: The status of an exception outside our hierarchy: a bug or an outage.
UNEXPECTED_STATUS = 500
#: First redelivery delay for unexpected errors, doubled per attempt up to ``MAX_BACKOFF_S``.
UNEXPECTED_DELAY_S = 5.0
MAX_BACKOFF_S = 60.0


def http_status(error: BaseException) -> int:
    """The HTTP status ``error`` is answered with, wherever it is answered."""
    if not isinstance(error, ReleaseError):
        return UNEXPECTED_STATUS
    if isinstance(error, ArtifactRejected):
        # A finished piece of work for whoever delivered its event, whatever the reason: the verdict is in
        # REJECTED.json, and a redelivery would only reach the same verdict.
        return 200
    status = STATUS_BY_REASON.get(error.reason)
    if status is not None:
        return status
    return next(code for cls, code in STATUS_BY_CLASS if isinstance(error, cls))


def settles(error: BaseException) -> bool:
    """Whether a consumer acknowledges the message whose handling raised ``error`` (else it is redelivered)."""
    return isinstance(error, PermanentError)


def redelivery_delay(error: BaseException, *, attempt: int = 1) -> float:
    """Seconds before a message that raised ``error`` on delivery ``attempt`` comes again (0 when it settles)."""
    if settles(error):
        return 0.0
    if isinstance(error, TemporaryError):
        return error.delay
    return float(min(MAX_BACKOFF_S, UNEXPECTED_DELAY_S * 2.0 ** (attempt - 1)))


def retry_after(error: BaseException) -> str | None:
    """A ``Retry-After`` header value (whole seconds) for refusals worth retrying; None for the rest.

    A request that timed out ran (or may have run) already, so it gets no invitation to be sent again.
    """
    if isinstance(error, TemporaryError) and error.reason is not Reason.REQUEST_TIMEOUT:
        return str(max(1, math.ceil(error.delay)))
    return None
