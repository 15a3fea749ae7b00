"""Zip safety and TorchServe ``.mar`` inspection, without executing anything from the archive.

Import-light on purpose (stdlib and ``schemas`` only, no torch): any process, the control plane's intake
included, can vet an uploaded archive with exactly the rules the pod applies before loading it. Every refusal is
an ``ArtifactRejected`` with a stable reason code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, TypedDict

from schemas.archive_rules import ArchiveLimits as ArchiveLimits
from schemas.archive_rules import check_entries
from schemas.archive_rules import check_entry_name as check_entry_name
from schemas.errors import ArtifactRejected, Reason
from schemas.manifest import VERSION_PATTERN

MAR_MANIFEST = "MAR-INF/MANIFEST.json"
MAR_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(VERSION_PATTERN)
_CHUNK = 1 << 20


class MarInfo(TypedDict):
    """What a ``.mar`` says about itself, read from ``MAR-INF/MANIFEST.json`` plus the archive's own digest."""

    model_name: str
    model_version: str
    handler: str
    serialized_file: str | None
    model_file: str | None
    requirements_file: str | None
    config_file: str | None
    runtime: str
    archiver_version: str
    entries: int
    uncompressed_bytes: int
    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_zip(archive: zipfile.ZipFile, *, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """Vet every entry with the shared rules (``schemas.archive_rules``); return the file entries."""
    return check_entries(archive.infolist(), limits=limits)


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open ``path`` as a zip, refusing symlinks and anything that is not a readable zip (ARCHIVE_INVALID)."""
    if path.is_symlink():
        raise ArtifactRejected(f"{path.name} is a symbolic link", reason=Reason.UNSAFE_SYMLINK, file=path.name)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArtifactRejected(f"{path.name} is not a readable zip archive: {e}", reason=Reason.ARCHIVE_INVALID,
                               file=path.name) from e


def _copy_limited(source: IO[bytes], dest: IO[bytes], *, entry: zipfile.ZipInfo, budget: int) -> int:
    """Copy one entry, stopping as soon as it passes its declared size or the archive's remaining budget."""
    written = 0
    limit = min(entry.file_size, budget)
    while chunk := source.read(_CHUNK):
        written += len(chunk)
        if written > limit:
            raise ArtifactRejected(f"archive entry {entry.filename!r} inflates past its declared size",
                                   reason=Reason.ARCHIVE_TOO_LARGE, file=entry.filename)
        dest.write(chunk)
    return written


def extract_zip(path: Path, dest: Path, *, limits: ArchiveLimits) -> list[str]:
    """Unpack a vetted zip into the empty folder ``dest``; return the relative paths of the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    budget = limits.max_total_bytes
    written: list[str] = []
    with open_zip(path) as archive:
        for info in check_zip(archive, limits=limits):
            target = (root / check_entry_name(info.filename)).resolve()
            if not target.is_relative_to(root):
                raise ArtifactRejected(f"archive entry {info.filename!r} escapes the model directory",
                                       reason=Reason.UNSAFE_PATH, file=info.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL | O_NOFOLLOW: never write through a link or over a file an earlier entry created.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                with archive.open(info) as source, os.fdopen(fd, "wb") as out:
                    budget -= _copy_limited(source, out, entry=info, budget=budget)
            except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as e:
                raise ArtifactRejected(f"archive entry {info.filename!r} is corrupt: {e}",
                                       reason=Reason.ARCHIVE_INVALID, file=info.filename) from e
            written.append(check_entry_name(info.filename))
    return written


def _read_mar_manifest(archive: zipfile.ZipFile, files: list[zipfile.ZipInfo], *,
                       limits: ArchiveLimits) -> dict[str, Any]:
    entry = next((info for info in files if info.filename == MAR_MANIFEST), None)
    if entry is None:
        raise ArtifactRejected(f"archive has no {MAR_MANIFEST}: not a TorchServe model archive",
                               reason=Reason.MANIFEST_MISSING, file=MAR_MANIFEST)
    if entry.file_size > limits.max_manifest_bytes:
        raise ArtifactRejected(f"{MAR_MANIFEST} is larger than {limits.max_manifest_bytes} bytes",
                               reason=Reason.MANIFEST_TOO_LARGE, file=MAR_MANIFEST)
    try:
        with archive.open(entry) as fh:
            raw = fh.read(limits.max_manifest_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as e:
        # The bytes do not inflate (bad CRC, corrupt stream, unknown compression): the archive is broken.
        raise ArtifactRejected(f"{MAR_MANIFEST} cannot be read from the archive: {e}", reason=Reason.ARCHIVE_INVALID,
                               file=MAR_MANIFEST) from e
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactRejected(f"{MAR_MANIFEST} is not valid JSON: {e}", reason=Reason.MANIFEST_INVALID_JSON,
                               file=MAR_MANIFEST) from e
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise ArtifactRejected(f"{MAR_MANIFEST} has no 'model' object", reason=Reason.MANIFEST_INVALID,
                               file=MAR_MANIFEST)
    return document


def _optional_str(model: dict[str, Any], key: str) -> str | None:
    value = model.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ArtifactRejected(f"{MAR_MANIFEST} model.{key} must be a string", reason=Reason.MANIFEST_INVALID,
                               file=MAR_MANIFEST)
    return value


def handler_file(handler: str) -> str | None:
    """The archive file a TorchServe handler spec names (``x.py`` or ``x.py:function``), None for built-in names."""
    module = handler.split(":", 1)[0]
    return module if module.endswith(".py") else None


def _check_mar_info(info: MarInfo, names: set[str]) -> None:
    if not MAR_NAME_PATTERN.match(info["model_name"]):
        raise ArtifactRejected(f"model name {info['model_name']!r} in {MAR_MANIFEST} is missing or invalid",
                               reason=Reason.MANIFEST_INVALID, file=MAR_MANIFEST)
    if not _VERSION.match(info["model_version"]) or info["model_version"] in (".", ".."):
        raise ArtifactRejected(f"model version {info['model_version']!r} in {MAR_MANIFEST} is invalid",
                               reason=Reason.MANIFEST_INVALID, file=MAR_MANIFEST)
    if not info["handler"]:
        raise ArtifactRejected(f"{MAR_MANIFEST} names no handler", reason=Reason.MANIFEST_INVALID,
                               file=MAR_MANIFEST)
    for role, named in (("handler", handler_file(info["handler"])), ("serializedFile", info["serialized_file"]),
                        ("modelFile", info["model_file"]), ("requirementsFile", info["requirements_file"]),
                        ("configFile", info["config_file"])):
        if named is not None and check_entry_name(named) not in names:
            raise ArtifactRejected(f"{MAR_MANIFEST} {role} {named!r} is not in the archive",
                                   reason=Reason.FILE_MISSING, file=named)


def inspect_mar_archive(archive: zipfile.ZipFile, *, size: int, limits: ArchiveLimits | None = None) -> MarInfo:
    """Vet an open ``.mar`` (zip rules, limits, its manifest and the files it names) and describe it, digest aside.

    Shared by the pod (``inspect_mar``) and the control plane's intake, which reads the archive from the bucket.
    """
    limits = limits or ArchiveLimits()
    files = check_zip(archive, limits=limits)
    model = _read_mar_manifest(archive, files, limits=limits)["model"]
    info = MarInfo(
        model_name=_optional_str(model, "modelName") or "",
        model_version=_optional_str(model, "modelVersion") or "1.0",
        handler=_optional_str(model, "handler") or "",
        serialized_file=_optional_str(model, "serializedFile"),
        model_file=_optional_str(model, "modelFile"),
        requirements_file=_optional_str(model, "requirementsFile"),
        config_file=_optional_str(model, "configFile"),
        runtime=str(model.get("runtime", "python")),
        archiver_version=str(model.get("archiverVersion", "")),
        entries=len(files),
        uncompressed_bytes=sum(entry.file_size for entry in files),
        sha256="",
        size=size,
    )
    _check_mar_info(info, {entry.filename for entry in files})
    return info


def inspect_mar(path: Path, *, limits: ArchiveLimits | None = None) -> MarInfo:
    """Vet a ``.mar`` file and describe it, its sha256 included. Runs no code."""
    with open_zip(path) as archive:
        info = inspect_mar_archive(archive, size=path.stat().st_size, limits=limits)
    info["sha256"] = sha256_file(path)
    return info
