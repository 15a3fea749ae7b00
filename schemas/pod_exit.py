"""Exit codes of ``python -m handlers.server``, shared with the serving backends that read them.

A backend tells a refused artifact from a crash by these codes: neither is retried, and a checksum mismatch
fails the version with ``checksum_mismatch`` rather than the generic ``rollout_failed``.
"""

from __future__ import annotations

from schemas.errors import Reason

#: The artifact was refused or failed to load (the log's last line says why, with its reason code).
LOAD_FAILED = 3
#: The bytes the pod holds are not the ones registered: a digest or a file checksum differs.
CHECKSUM_MISMATCH = 4

#: Exit codes after which restarting the pod cannot help.
FINAL = frozenset({LOAD_FAILED, CHECKSUM_MISMATCH})


def exit_code_for(reason: Reason) -> int:
    """The exit code for a load failure with ``reason``."""
    return CHECKSUM_MISMATCH if reason is Reason.CHECKSUM_MISMATCH else LOAD_FAILED


def reason_for(exit_code: int | None) -> Reason:
    """The reason a rollout fails with when a pod exited with ``exit_code``."""
    return Reason.CHECKSUM_MISMATCH if exit_code == CHECKSUM_MISMATCH else Reason.ROLLOUT_FAILED
