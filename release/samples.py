"""Eval sets and reference samples (``.npz``) as the control plane reads them: capped before anything inflates.

An ``.npz`` is a zip of ``.npy`` arrays from the untrusted bucket. It goes through the shared zip rules
(``schemas.archive_rules``) with limits sized for samples, then every array's header is read (shape, dtype)
and refused when it holds objects or more elements than allowed, before a single array byte is decoded.
Intake checks the headers (``check_npz``); the gates and the drift monitor load through ``load_npz``. A sample
lives in a model folder or, for a ``.mar``, inside the archive (``read_sample``).
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from schemas.archive_rules import ArchiveLimits, check_entries
from schemas.errors import ArtifactRejected, Reason

_HINT = "Ship a smaller sample (a few thousand rows is plenty for gates and drift) saved with numpy.savez."


@dataclass(frozen=True, kw_only=True)
class SampleLimits:
    """How large a sample the control plane will read."""

    max_compressed_bytes: int = 64 << 20
    max_uncompressed_bytes: int = 256 << 20
    max_elements: int = 32 << 20
    max_arrays: int = 16

    def archive(self) -> ArchiveLimits:
        """The zip rules for an npz under these limits."""
        return ArchiveLimits(max_total_bytes=self.max_uncompressed_bytes, max_file_bytes=self.max_uncompressed_bytes,
                             max_entries=self.max_arrays)


@dataclass(frozen=True)
class ArrayHeader:
    """What an ``.npy`` member declares about itself."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _too_large(message: str, label: str) -> ArtifactRejected:
    return ArtifactRejected(message, reason=Reason.SAMPLE_TOO_LARGE, file=label, hint=_HINT)


def _invalid(message: str, label: str) -> ArtifactRejected:
    return ArtifactRejected(message, reason=Reason.SAMPLE_INVALID, file=label,
                            hint="Save the sample with numpy.savez(file, x=..., y=...) from numeric arrays.")


def _header(member: IO[bytes], *, label: str) -> ArrayHeader:
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as exc:
        raise _invalid(f"{label} is not a valid .npy array: {exc}", label) from exc
    if dtype.hasobject:
        raise _invalid(f"{label} holds Python objects (a pickle), not numbers", label)
    return ArrayHeader(shape=tuple(int(d) for d in shape), dtype=dtype)


def _open(data: bytes, *, label: str, limits: SampleLimits) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    if len(data) > limits.max_compressed_bytes:
        raise _too_large(f"{label} is {len(data)} bytes, over {limits.max_compressed_bytes}", label)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _invalid(f"{label} is not an .npz archive: {exc}", label) from exc
    try:
        files = check_entries(archive.infolist(), limits=limits.archive())
    except ArtifactRejected as rejected:
        archive.close()
        raise ArtifactRejected(f"{label}: {rejected.message}", reason=rejected.reason, file=label,
                               hint=_HINT) from rejected
    return archive, files


def _checked(archive: zipfile.ZipFile, files: list[zipfile.ZipInfo], *, label: str,
             limits: SampleLimits) -> dict[str, tuple[zipfile.ZipInfo, ArrayHeader]]:
    arrays: dict[str, tuple[zipfile.ZipInfo, ArrayHeader]] = {}
    elements = 0
    for info in files:
        if not info.filename.endswith(".npy"):
            raise _invalid(f"{label} holds {info.filename!r}, which is not an .npy array", label)
        with archive.open(info) as member:
            header = _header(member, label=f"{label}:{info.filename}")
        count = math.prod(header.shape)
        elements += count
        if elements > limits.max_elements or count * header.dtype.itemsize > limits.max_uncompressed_bytes:
            raise _too_large(f"{label} declares {elements} elements (array {info.filename!r} shaped "
                             f"{list(header.shape)}), over {limits.max_elements}", label)
        arrays[info.filename.removesuffix(".npy")] = (info, header)
    return arrays


def check_npz(data: bytes, *, label: str, limits: SampleLimits | None = None) -> dict[str, ArrayHeader]:
    """The arrays an npz declares, refused when unsafe or over the limits. Decodes no array data."""
    limits = limits or SampleLimits()
    archive, files = _open(data, label=label, limits=limits)
    with archive:
        return {name: header for name, (_info, header) in _checked(archive, files, label=label,
                                                                   limits=limits).items()}


def load_npz(data: bytes, *, label: str, limits: SampleLimits | None = None) -> dict[str, np.ndarray[Any, Any]]:
    """Every array of an npz, after ``check_npz``'s checks."""
    limits = limits or SampleLimits()
    archive, files = _open(data, label=label, limits=limits)
    with archive:
        out: dict[str, np.ndarray[Any, Any]] = {}
        for name, (info, _header) in _checked(archive, files, label=label, limits=limits).items():
            try:
                with archive.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise _invalid(f"{label}:{info.filename} cannot be read: {exc}", label) from exc
        return out


def read_sample_bytes(artifact: Path, name: str, *, limits: SampleLimits | None = None) -> bytes:
    """The raw bytes of sample ``name`` of a materialised artifact: a file of a folder, or a member of a ``.mar``."""
    limits = limits or SampleLimits()
    if artifact.is_dir():
        path = artifact / name
        if path.stat().st_size > limits.max_compressed_bytes:
            raise _too_large(f"{name} is {path.stat().st_size} bytes, over {limits.max_compressed_bytes}", name)
        return path.read_bytes()
    try:
        with zipfile.ZipFile(artifact) as archive:
            info = archive.getinfo(name)
            if info.file_size > limits.max_compressed_bytes:
                raise _too_large(f"{name} is {info.file_size} bytes, over {limits.max_compressed_bytes}", name)
            with archive.open(info) as member:
                return member.read(limits.max_compressed_bytes + 1)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise _invalid(f"{artifact.name} has no readable {name}: {exc}", name) from exc


def read_sample(artifact: Path, name: str, *, limits: SampleLimits | None = None) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of sample ``name`` of a materialised artifact, capped (see ``SampleLimits``)."""
    return load_npz(read_sample_bytes(artifact, name, limits=limits), label=name, limits=limits)
