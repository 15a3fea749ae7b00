"""Looking inside untrusted files without running them: archives, ``.mar`` files, weights and samples.

Intake runs in the control plane, where no artifact code may ever execute, so everything here reads bytes only.
Zips go through the very rules the serving pod applies (``schemas.archive_rules``, via ``handlers.archive`` for
``.mar`` files), so intake refuses everything a pod would; pickles go through ``release.pickle_scan``; eval and
reference samples through ``release.samples``. Extraction and loading happen only in the serving pod.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

from handlers.archive import MarInfo, check_zip, handler_file, inspect_mar_archive
from release.pickle_scan import PICKLE_SUFFIXES, scan_weights
from release.samples import ArrayHeader, SampleLimits, check_npz
from schemas.archive_rules import ArchiveLimits
from schemas.errors import ArtifactRejected, Reason

LIMITS = ArchiveLimits()
SAMPLE_LIMITS = SampleLimits()
#: Extra files of a ``.mar`` that intake takes as the eval set and the drift reference, as a folder model's.
MAR_EVAL = "eval.npz"
MAR_REFERENCE = "reference.npz"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_ARCHIVE_SUFFIXES = (".mar", ".zip")
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError, ValueError)


@dataclass(frozen=True)
class MarContents:
    """What intake learnt from a ``.mar``: its own manifest and the samples it carries."""

    info: MarInfo
    samples: dict[str, dict[str, ArrayHeader]] = field(default_factory=dict)


@contextmanager
def unreadable_as(label: str) -> Iterator[None]:
    """Turn a failure to read an archive's bytes (corrupt data, bad CRC, odd compression) into ARCHIVE_INVALID."""
    try:
        yield
    except _UNREADABLE as exc:
        raise ArtifactRejected(f"{label} cannot be read as a zip archive: {type(exc).__name__}: {exc}",
                               reason=Reason.ARCHIVE_INVALID, file=label,
                               hint="Rebuild the archive with a standard zip tool (torch-model-archiver for .mar).") \
            from exc


def _sniff(handle: IO[bytes]) -> bytes:
    head = handle.read(4)
    handle.seek(0)
    return head


def _check_sample(data: bytes, *, label: str, needs: tuple[str, ...]) -> dict[str, ArrayHeader]:
    arrays = check_npz(data, label=label, limits=SAMPLE_LIMITS)
    missing = [name for name in needs if name not in arrays]
    if missing:
        raise ArtifactRejected(f"{label} has no array {missing[0]!r} (it has {sorted(arrays)})",
                               reason=Reason.SAMPLE_INVALID, file=label,
                               hint="Save the eval set as numpy.savez(f, x=..., y=...), the reference as x=...")
    return arrays


def check_sample_file(handle: IO[bytes], *, label: str, size: int, eval_set: bool) -> dict[str, ArrayHeader]:
    """An eval set (needs ``x`` and ``y``) or a reference sample (needs ``x``) of a model folder, capped."""
    if size > SAMPLE_LIMITS.max_compressed_bytes:
        raise ArtifactRejected(f"{label} is {size} bytes, over {SAMPLE_LIMITS.max_compressed_bytes}",
                               reason=Reason.SAMPLE_TOO_LARGE, file=label)
    return _check_sample(handle.read(SAMPLE_LIMITS.max_compressed_bytes + 1), label=label,
                         needs=("x", "y") if eval_set else ("x",))


def _mar_samples(archive: zipfile.ZipFile, names: set[str], *, label: str) -> dict[str, dict[str, ArrayHeader]]:
    samples = {}
    for name, needs in ((MAR_EVAL, ("x", "y")), (MAR_REFERENCE, ("x",))):
        if name not in names:
            continue
        info = archive.getinfo(name)
        if info.file_size > SAMPLE_LIMITS.max_compressed_bytes:
            raise ArtifactRejected(f"{label}:{name} is {info.file_size} bytes, over "
                                   f"{SAMPLE_LIMITS.max_compressed_bytes}", reason=Reason.SAMPLE_TOO_LARGE,
                                   file=name)
        with archive.open(info) as member:
            data = member.read(SAMPLE_LIMITS.max_compressed_bytes + 1)
        samples[name] = _check_sample(data, label=f"{label}:{name}", needs=needs)
    return samples


def inspect_mar(handle: IO[bytes], *, label: str, size: int) -> MarContents:
    """Vet a ``.mar`` as the pod will (zip rules, its manifest, the files it names), scan its pickles and
    check the samples it carries."""
    with unreadable_as(label), zipfile.ZipFile(handle) as archive:
        try:
            info = inspect_mar_archive(archive, size=size, limits=LIMITS)
        except ArtifactRejected as rejected:
            rejected.message = f"{label}: {rejected.message}"
            raise
        names = {entry.filename for entry in check_zip(archive, limits=LIMITS)}
        for name in sorted(names):
            if name.endswith(PICKLE_SUFFIXES) or name == info["serialized_file"]:
                with archive.open(name) as member:
                    scan_weights(member, label=f"{label}:{name}", size=archive.getinfo(name).file_size,
                                 limits=LIMITS)
        return MarContents(info=info, samples=_mar_samples(archive, names, label=label))


def mar_members(contents: MarContents) -> list[str]:
    """The archive members a ``.mar``'s manifest refers to (checked present by ``inspect_mar``)."""
    info = contents.info
    named = [handler_file(info["handler"]), info["serialized_file"], info["model_file"], *contents.samples]
    return sorted({name for name in named if name is not None})


def check_listed_file(handle: IO[bytes], *, path: str, size: int) -> None:
    """A folder artifact's file as the pod will see it: zips (a ``.mar`` included) under the shared rules,
    pickles scanned. Eval and reference samples are checked by ``check_sample_file`` instead."""
    suffix = PurePosixPath(path).suffix
    if suffix in PICKLE_SUFFIXES:
        with unreadable_as(path):
            scan_weights(handle, label=path, size=size, limits=LIMITS)
        return
    if suffix == ".mar":
        inspect_mar(handle, label=path, size=size)
        return
    if suffix in _ARCHIVE_SUFFIXES or _sniff(handle) in _ZIP_MAGIC:
        with unreadable_as(path), zipfile.ZipFile(handle) as archive:
            try:
                check_zip(archive, limits=LIMITS)
            except ArtifactRejected as rejected:
                raise ArtifactRejected(f"{path}: {rejected.message}", reason=rejected.reason, file=path,
                                       hint=rejected.hint, details={"entry": rejected.file}) from rejected
