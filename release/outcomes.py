"""What a consumer does with a message whose handling raised: ack it or redeliver it later, and which HTTP status
a pushed delivery is answered with. Every answer comes from the one table, ``schemas.error_table``.

Used by every consumer loop and by the functions' HTTP responses (Pub/Sub push and Eventarc redeliver on 5xx
and 429, and drop on other 4xx), so a given error is treated the same way whatever carried the event.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.error_table import http_status, redelivery_delay, settles


@dataclass(frozen=True)
class Disposition:
    """What to do with a message whose handling raised: ack it or not, after what delay, which HTTP status."""

    ack: bool
    http_status: int
    delay_s: float = 0.0


def disposition(exc: BaseException, *, attempt: int = 1) -> Disposition:
    """How to settle a message whose handler raised ``exc`` on delivery ``attempt``."""
    return Disposition(ack=settles(exc), http_status=http_status(exc),
                       delay_s=redelivery_delay(exc, attempt=attempt))
