"""Which artifact a bucket object belongs to, its content address, and what intake decided about it.

A model folder is ``models/<name>/<version>/...`` (its ``REJECTED.json`` is not part of it); a TorchServe
archive is ``models/<name>/<version>.mar``. Pure: names in, references out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from schemas.manifest import REJECTED_FILENAME

_DIR_ARTIFACT = re.compile(r"^models/([^/]+)/([^/]+)/(.+)$")
_MAR_ARTIFACT = re.compile(r"^models/([^/]+)/([^/]+)\.mar$")

Status = Literal["registered", "pending", "rejected", "ignored"]


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact lives in the bucket and which model/version its path claims."""

    kind: Literal["dir", "mar"]
    model: str
    version: str
    prefix: str

    @property
    def report_name(self) -> str:
        """Where the rejection report goes."""
        return self.prefix + REJECTED_FILENAME if self.kind == "dir" else self.prefix + "." + REJECTED_FILENAME


@dataclass(frozen=True)
class IntakeResult:
    """What intake decided for one artifact."""

    status: Status
    artifact: str
    model: str | None = None
    version: str | None = None
    created: bool = False
    reason: str | None = None
    message: str = ""
    missing: list[str] = field(default_factory=list)


def artifact_for(object_name: str) -> ArtifactRef | None:
    """The artifact an object belongs to, or None for objects that are not part of one."""
    mar = _MAR_ARTIFACT.match(object_name)
    if mar:
        return ArtifactRef(kind="mar", model=mar.group(1), version=mar.group(2), prefix=object_name)
    match = _DIR_ARTIFACT.match(object_name)
    if match is None:
        return None
    if match.group(3) == REJECTED_FILENAME:
        return None
    return ArtifactRef(kind="dir", model=match.group(1), version=match.group(2),
                       prefix=f"models/{match.group(1)}/{match.group(2)}/")
