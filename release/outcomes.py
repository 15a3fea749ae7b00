"""One table from error type to what a consumer does with the message: ack, or redeliver later.

Used by every consumer loop and by the functions' HTTP responses (Pub/Sub push and Eventarc redeliver on 5xx
and 429, and drop on other 4xx), so a given error is treated the same way whatever carried the event.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.errors import (
    AliasConflict,
    ArtifactRejected,
    BadRequest,
    InvalidTransition,
    NotFound,
    PermanentError,
    Reason,
    TemporaryError,
    Unauthorized,
)


@dataclass(frozen=True)
class Disposition:
    """What to do with a message whose handling raised: ack it or not, after what delay, which HTTP status."""

    ack: bool
    http_status: int
    delay_s: float = 0.0


_TABLE: list[tuple[type[BaseException], Disposition]] = [
    (TemporaryError, Disposition(ack=False, http_status=503)),
    (ArtifactRejected, Disposition(ack=True, http_status=200)),
    (InvalidTransition, Disposition(ack=True, http_status=409)),
    (AliasConflict, Disposition(ack=True, http_status=409)),
    (NotFound, Disposition(ack=True, http_status=404)),
    (Unauthorized, Disposition(ack=True, http_status=401)),
    (BadRequest, Disposition(ack=True, http_status=400)),
    (PermanentError, Disposition(ack=True, http_status=422)),
]

#: Anything unexpected is a bug or an outage: redeliver with backoff; the bus dead-letters it eventually.
UNEXPECTED = Disposition(ack=False, http_status=500, delay_s=5.0)


def disposition(exc: BaseException, *, attempt: int = 1) -> Disposition:
    """How to settle a message whose handler raised ``exc`` on delivery ``attempt``."""
    for kind, outcome in _TABLE:
        if isinstance(exc, kind):
            if isinstance(exc, TemporaryError):
                return Disposition(ack=False, http_status=429 if exc.reason is Reason.QUEUE_FULL else 503,
                                   delay_s=exc.delay)
            return outcome
    return Disposition(ack=False, http_status=500, delay_s=min(60.0, UNEXPECTED.delay_s * 2 ** (attempt - 1)))
