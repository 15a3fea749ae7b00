"""Translating a cloud SDK's exceptions into our hierarchy, from a per-adapter table.

Each adapter keeps its own table (which vendor error means "retry later" differs by service); the walk over
the table and the ``raise ... from`` live here once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from schemas.errors import Reason, ReleaseError

ErrorTable = tuple[tuple[type[BaseException], type[ReleaseError], Reason], ...]


def raise_translated(error: BaseException, *, table: ErrorTable, what: str) -> NoReturn:
    """Raise the first matching row's error for ``error`` (chained), or ``error`` itself when none matches."""
    for vendor, ours, reason in table:
        if isinstance(error, vendor):
            raise ours(f"{what} failed: {error}", reason=reason) from error
    raise error


@contextmanager
def translated(*, table: ErrorTable, what: str) -> Iterator[None]:
    """Run the block, translating vendor errors through ``table``; our own errors pass through."""
    try:
        yield
    except ReleaseError:
        raise
    except Exception as error:  # raise_translated re-raises anything the table does not know
        raise_translated(error, table=table, what=what)
