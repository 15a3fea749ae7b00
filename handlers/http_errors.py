"""The OIP error body the pod answers with. Status and ``Retry-After`` come from the one table in
``schemas.error_table``, shared with the router, the management API and the functions."""

from __future__ import annotations

from typing import Any

from schemas.error_table import http_status, retry_after
from schemas.errors import ReleaseError

__all__ = ["error_body", "http_status", "retry_after"]


def error_body(error: ReleaseError) -> dict[str, Any]:
    """OIP's ``{"error": message}``, plus our stable ``reason``, a ``hint`` and any ``details``."""
    body: dict[str, Any] = {"error": error.message, "reason": str(error.reason), "hint": error.hint}
    if error.details:
        body["details"] = error.details
    return body
