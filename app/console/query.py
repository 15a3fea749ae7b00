"""Query-string parameters of the read API, checked: a bad value is a ``BadRequest`` (400) naming the bound."""

from __future__ import annotations

from starlette.requests import Request

from schemas.errors import BadRequest
from schemas.states import VersionState


def int_param(request: Request, name: str, *, default: int | None, low: int, high: int) -> int | None:
    """The integer ``name`` in ``low..high``, or ``default`` when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be an integer", hint=f"Give {name} between {low} and {high}.") from None
    if not low <= value <= high:
        raise BadRequest(f"`{name}` must be between {low} and {high}", hint=f"Give {name} between {low} and {high}.")
    return value


def state_param(request: Request) -> VersionState | None:
    """The ``state`` filter, one of the version states, or None."""
    raw = request.query_params.get("state")
    if not raw:
        return None
    try:
        return VersionState(raw)
    except ValueError:
        raise BadRequest(f"unknown state {raw!r}",
                         hint=f"One of {', '.join(s.value for s in VersionState)}.") from None


def text_param(request: Request, name: str, *, max_length: int = 128) -> str | None:
    """A short free-text parameter (a model or subscription name), or None."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length:
        raise BadRequest(f"`{name}` is longer than {max_length} characters")
    return raw
