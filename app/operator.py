"""Who is at the keyboard: the actor that audit entries made from the command line name by default."""

from __future__ import annotations

import getpass


def whoami() -> str:
    """The login name of the current user, or ``unknown`` where the system cannot say."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
