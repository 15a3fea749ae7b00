"""The one error table: every error gets one status and one ack decision, wherever it is answered."""

from __future__ import annotations

import pytest

from handlers.http_errors import http_status as pod_status
from release.outcomes import disposition
from schemas.error_table import http_status, redelivery_delay, retry_after, settles
from schemas.errors import (
    AliasConflict,
    ArtifactRejected,
    BadRequest,
    NotFound,
    PermanentError,
    Reason,
    ReleaseError,
    TemporaryError,
    Unauthorized,
)


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_has_one_status_for_pod_and_control_plane(reason):
    """Each reason code, raised as any error class, maps to the same status in the pod and in the consumers."""
    for error in (ReleaseError("x", reason=reason), PermanentError("x", reason=reason),
                  TemporaryError("x", reason=reason)):
        assert pod_status(error) == disposition(error).http_status == http_status(error)
        assert 200 <= http_status(error) < 600


@pytest.mark.parametrize(("error", "status", "ack"), [
    (TemporaryError("full", reason=Reason.QUEUE_FULL, delay=0.1), 429, False),
    (TemporaryError("later"), 503, False),
    (TemporaryError("slow", reason=Reason.REQUEST_TIMEOUT), 504, False),
    (ArtifactRejected("bad", reason=Reason.CHECKSUM_MISMATCH), 200, True),
    (NotFound("gone", reason=Reason.MODEL_NOT_FOUND), 404, True),
    (AliasConflict("moved"), 409, True),
    (Unauthorized("who"), 401, True),
    (BadRequest("no"), 400, True),
    (PermanentError("broken", reason=Reason.ROLLOUT_FAILED), 422, True),
    (RuntimeError("bug"), 500, False),
])
def test_status_and_ack(error, status, ack):
    """Status comes from the reason first, then the class; permanent errors settle, the rest redeliver."""
    assert http_status(error) == status
    assert settles(error) is ack


def test_full_queue_invites_a_retry_and_a_timeout_does_not():
    """A full queue answers Retry-After (at least one second); a timed-out request gets none."""
    assert retry_after(TemporaryError("full", reason=Reason.QUEUE_FULL, delay=0.1)) == "1"
    assert retry_after(TemporaryError("later", delay=7.2)) == "8"
    assert retry_after(TemporaryError("slow", reason=Reason.REQUEST_TIMEOUT)) is None
    assert retry_after(BadRequest("no")) is None


def test_unexpected_errors_back_off_exponentially_to_a_cap():
    """Bugs and outages are redelivered after 5 s, doubling per attempt, never more than 60 s apart."""
    assert [redelivery_delay(RuntimeError(), attempt=a) for a in (1, 2, 3, 10)] == [5.0, 10.0, 20.0, 60.0]
    assert redelivery_delay(TemporaryError("x", delay=2.5)) == 2.5
    assert redelivery_delay(BadRequest("x")) == 0.0
