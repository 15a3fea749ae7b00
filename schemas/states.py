"""The release controller's state machine as data: states and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class VersionState(StrEnum):
    """Where a model version is in its life."""

    REGISTERED = "REGISTERED"
    DEPLOYING = "DEPLOYING"
    STAGED = "STAGED"
    EVALUATING = "EVALUATING"
    REJECTED = "REJECTED"
    PROMOTING = "PROMOTING"
    LIVE = "LIVE"
    RETIRED = "RETIRED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"


S = VersionState

TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    S.REGISTERED: frozenset({S.DEPLOYING, S.FAILED}),
    S.DEPLOYING: frozenset({S.STAGED, S.FAILED}),
    # STAGED -> PROMOTING skips the gates: only for a person's promote or a rollback's restore.
    S.STAGED: frozenset({S.EVALUATING, S.PROMOTING, S.FAILED}),
    S.EVALUATING: frozenset({S.REJECTED, S.PROMOTING, S.FAILED}),
    S.PROMOTING: frozenset({S.LIVE, S.ROLLED_BACK, S.FAILED}),
    # A LIVE version leaves when a newer one replaces it (RETIRED) or when it is rolled back from.
    S.LIVE: frozenset({S.RETIRED, S.ROLLED_BACK}),
    # A retired version can be brought back by a rollback, which redeploys and re-promotes it.
    S.RETIRED: frozenset({S.DEPLOYING}),
    S.ROLLED_BACK: frozenset({S.DEPLOYING}),
    S.REJECTED: frozenset({S.DEPLOYING}),
    S.FAILED: frozenset({S.DEPLOYING}),
}

#: States in which the controller has nothing left to do for a version on its own.
SETTLED: frozenset[VersionState] = frozenset({S.LIVE, S.RETIRED, S.REJECTED, S.FAILED, S.ROLLED_BACK})

#: States in which a version's pods should be running.
SERVING: frozenset[VersionState] = frozenset({S.STAGED, S.EVALUATING, S.PROMOTING, S.LIVE})


def can_move(current: VersionState, target: VersionState) -> bool:
    """True when ``current -> target`` is an edge of the state machine."""
    return target in TRANSITIONS[current]
