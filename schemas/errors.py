"""The one error hierarchy, shared by the control plane and the serving pods.

Every error carries a stable ``reason`` code (scripts and dashboards key on it) and says what to do next.
``TemporaryError`` means "redeliver later"; ``PermanentError`` means "acknowledge, record, publish a failure".
The mapping from these classes to HTTP status and to ack/nack lives in one table each, next to the code that
speaks HTTP or talks to a bus; this module only defines the classes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Stable reason codes. Never rename a member: REJECTED.json files and alerts refer to them."""

    # Artifact intake.
    MANIFEST_MISSING = "manifest_missing"
    MANIFEST_INVALID_JSON = "manifest_invalid_json"
    MANIFEST_INVALID = "manifest_invalid"
    MANIFEST_PATH_MISMATCH = "manifest_path_mismatch"
    MANIFEST_TOO_LARGE = "manifest_too_large"
    FILE_MISSING = "file_missing"
    SIZE_MISMATCH = "size_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UNSAFE_PATH = "unsafe_path"
    UNSAFE_SYMLINK = "unsafe_symlink"
    ARCHIVE_INVALID = "archive_invalid"
    ARCHIVE_TOO_LARGE = "archive_too_large"
    ARCHIVE_TOO_MANY_ENTRIES = "archive_too_many_entries"
    FILE_TOO_LARGE = "file_too_large"
    UNSAFE_PICKLE = "unsafe_pickle"
    HANDLER_CODE_FORBIDDEN = "handler_code_forbidden"
    MODEL_CODE_FORBIDDEN = "model_code_forbidden"
    UNKNOWN_HANDLER = "unknown_handler"
    VERSION_CONFLICT = "version_conflict"
    OBJECT_CHANGED = "object_changed"
    POLICY_INVALID = "policy_invalid"
    NOT_AN_ARTIFACT = "not_an_artifact"
    REQUIREMENTS_FORBIDDEN = "requirements_forbidden"
    SAMPLE_TOO_LARGE = "sample_too_large"
    SAMPLE_INVALID = "sample_invalid"
    INSPECTION_FAILED = "inspection_failed"
    # Registry and aliases.
    MODEL_NOT_FOUND = "model_not_found"
    VERSION_NOT_FOUND = "version_not_found"
    ALIAS_NOT_FOUND = "alias_not_found"
    ALIAS_CONFLICT = "alias_conflict"
    INVALID_TRANSITION = "invalid_transition"
    # Serving and rollout.
    ROLLOUT_FAILED = "rollout_failed"
    MODEL_LOAD_FAILED = "model_load_failed"
    BAD_REQUEST = "bad_request"
    BODY_TOO_LARGE = "body_too_large"
    QUEUE_FULL = "queue_full"
    REQUEST_TIMEOUT = "request_timeout"
    HANDLER_ERROR = "handler_error"
    NOT_READY = "not_ready"
    CAPACITY = "capacity"
    RESCHEDULED = "rescheduled"
    # Events and transport.
    EVENT_INVALID = "event_invalid"
    UNAVAILABLE = "unavailable"
    UNAUTHORIZED = "unauthorized"
    INTERNAL = "internal"


class ReleaseError(Exception):
    """Root of every error this system raises on purpose."""

    reason: Reason = Reason.INTERNAL
    hint: str = "This is a bug or an outage: look at the structured log around this error."

    def __init__(self, message: str, *, reason: Reason | None = None, hint: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if hint is not None:
            self.hint = hint
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable form used in REJECTED.json, API error bodies and failure events."""
        body: dict[str, Any] = {"reason": str(self.reason), "message": self.message, "hint": self.hint}
        if self.details:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


class TemporaryError(ReleaseError):
    """Something outside us is not ready yet; the same work should succeed later. Redeliver after ``delay``."""

    reason = Reason.UNAVAILABLE
    hint = "Nothing to do: the work is retried automatically."

    def __init__(self, message: str, *, delay: float = 5.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.delay = delay


class Reschedule(TemporaryError):
    """A wait came due early (a bus that cannot delay a delivery): hand the message back for ``delay_s``.

    Not a failure: the work is simply not due yet, so consumers nack it with that delay and HTTP answers 429
    with ``Retry-After``, which makes a push delivery come back later.
    """

    reason = Reason.RESCHEDULED
    hint = "Nothing to do: the event is delivered again when it is due."

    def __init__(self, message: str, *, delay_s: float, **kwargs: Any) -> None:
        super().__init__(message, delay=max(0.0, delay_s), **kwargs)


class PermanentError(ReleaseError):
    """Retrying cannot help: acknowledge the work, record why, publish a failure event."""


class ArtifactRejected(PermanentError):
    """An uploaded artifact is bad. It is never registered; a REJECTED.json beside it says why."""

    reason = Reason.MANIFEST_INVALID
    hint = "Fix the artifact and upload it again under a new version."

    def __init__(self, message: str, *, reason: Reason, file: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, reason=reason, **kwargs)
        self.file = file

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.file is not None:
            body["file"] = self.file
        return body


class NotFound(PermanentError):
    """A model, version or alias that does not exist was asked for."""

    reason = Reason.VERSION_NOT_FOUND
    hint = "List what exists with `release models` / `release versions NAME`."


class AliasConflict(PermanentError):
    """An alias moved since it was read: the compare-and-swap lost. Re-read the alias and decide again."""

    reason = Reason.ALIAS_CONFLICT
    hint = "Another promoter moved the alias first: look at `release aliases NAME`, then retry if still wanted."


class InvalidTransition(PermanentError):
    """A version was asked to move to a state its current state does not lead to."""

    reason = Reason.INVALID_TRANSITION
    hint = "See `release show NAME VERSION` for the version's state and history."


class BadRequest(PermanentError):
    """A client sent a request we cannot serve as it is."""

    reason = Reason.BAD_REQUEST
    hint = "Check the request against the model's metadata (GET /v2/models/NAME)."


class Unauthorized(PermanentError):
    """A write to the management API came without a valid token."""

    reason = Reason.UNAUTHORIZED
    hint = "Send `Authorization: Bearer $RELEASE_API_TOKEN`."
