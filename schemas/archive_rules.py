"""The one set of zip rules, applied by intake (control plane) and by the serving pod before it unpacks anything.

A pure function over a zip's central directory (``zipfile.ZipInfo`` entries): no I/O, so both sides can import it
(the pod may import only ``handlers`` and ``schemas``). Whatever a pod would refuse, intake refuses first, with the
same stable reason code. Declared sizes are checked here; the pod checks again while it writes bytes.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass

from schemas.errors import ArtifactRejected, Reason

_DRIVE = re.compile(r"^[A-Za-z]:")
_ENCRYPTED = 0x1


@dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    """How much an archive may hold, and how far one entry may inflate beyond its compressed size."""

    max_total_bytes: int = 8 << 30
    max_file_bytes: int = 4 << 30
    max_entries: int = 10_000
    max_manifest_bytes: int = 1 << 20
    #: Entries inflating over ``max_ratio``:1 are zip bombs, once they are larger than ``ratio_floor_bytes``
    #: (small files of zeros compress that well legitimately and cost nothing).
    max_ratio: int = 200
    ratio_floor_bytes: int = 1 << 20


def check_entry_name(name: str) -> str:
    """Return the entry's relative path (without a trailing ``/``) or raise ``ArtifactRejected(UNSAFE_PATH)``."""
    path = name[:-1] if name.endswith("/") else name
    unsafe = (
        not path
        or len(path) > 512
        or "\x00" in path
        or "\\" in path
        or path.startswith("/")
        or bool(_DRIVE.match(path))
        or any(part in ("", ".", "..") for part in path.split("/"))
    )
    if unsafe:
        raise ArtifactRejected(f"archive entry {name!r} would land outside the model directory",
                               reason=Reason.UNSAFE_PATH, file=name,
                               hint="Build the archive from a folder with relative paths only (no '..', no '/').")
    return path


def _check_size(info: zipfile.ZipInfo, path: str, *, limits: ArchiveLimits) -> None:
    if info.file_size > limits.max_file_bytes:
        raise ArtifactRejected(
            f"archive entry {path!r} declares {info.file_size} bytes, the limit is {limits.max_file_bytes}",
            reason=Reason.FILE_TOO_LARGE, file=path)
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
        raise ArtifactRejected(
            f"archive entry {path!r} inflates {ratio:.0f}:1 ({info.compress_size} to {info.file_size} bytes), "
            f"the limit is {limits.max_ratio}:1", reason=Reason.ARCHIVE_TOO_LARGE, file=path,
            details={"entry": path, "ratio": round(ratio)})


def check_entries(infos: list[zipfile.ZipInfo], *, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """Vet every entry's name, type, encryption, uniqueness and declared size; return the file entries."""
    if len(infos) > limits.max_entries:
        raise ArtifactRejected(f"archive has {len(infos)} entries, the limit is {limits.max_entries}",
                               reason=Reason.ARCHIVE_TOO_MANY_ENTRIES)
    seen: set[str] = set()
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        path = check_entry_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArtifactRejected(f"archive entry {info.filename!r} is a symbolic link",
                                   reason=Reason.UNSAFE_SYMLINK, file=info.filename)
        if info.flag_bits & _ENCRYPTED:
            raise ArtifactRejected(f"archive entry {info.filename!r} is encrypted",
                                   reason=Reason.ARCHIVE_INVALID, file=info.filename)
        if path in seen:
            raise ArtifactRejected(f"archive entry {path!r} appears twice", reason=Reason.ARCHIVE_INVALID,
                                   file=info.filename)
        seen.add(path)
        if info.is_dir():
            continue
        _check_size(info, path, limits=limits)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArtifactRejected(f"archive unpacks to more than {limits.max_total_bytes} bytes",
                                   reason=Reason.ARCHIVE_TOO_LARGE)
        files.append(info)
    return files
