"""Query-string parameters of the read API, checked: a bad value is a ``BadRequest`` (400) naming the bound."""

from __future__ import annotations

import re

from starlette.requests import Request

from schemas.errors import BadRequest
from schemas.manifest import NAME_PATTERN
from schemas.states import VersionState


def int_param(request: Request, name: str, *, default: int | None, low: int, high: int) -> int | None:
    """The integer ``name`` in ``low..high``, or ``default`` when absent."""
    raw = request.query_params.get(name)
    if raw is None:
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
    """A short free-text parameter (a subscription name), or None when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not 0 < len(raw) <= max_length:
        raise BadRequest(f"`{name}` must be 1 to {max_length} characters")
    return raw


def model_param(request: Request) -> str | None:
    """The ``model`` filter: a model name as manifests spell it, or None when absent."""
    raw = request.query_params.get("model")
    if raw is None:
        return None
    return model_name(raw)


def model_name(raw: str) -> str:
    """``raw`` when it is a valid model name, else ``BadRequest``."""
    if not re.fullmatch(NAME_PATTERN.strip("^$"), raw):
        raise BadRequest(f"{raw[:70]!r} is not a model name", hint=f"Model names match {NAME_PATTERN}.")
    return raw
