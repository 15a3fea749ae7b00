"""Turn an artifact path (a model directory or a ``.mar``) into a verified local model directory.

This is the pod's gate against untrusted bytes: no symbolic links, no path escapes, every listed file present
with its declared size and sha256, archives unpacked within limits, and model code refused when the pod runs
with ``--no-model-code``. With ``--expect-digest`` the manifest itself must be the one registered (its digest
pins every file), so bytes swapped in the bucket after the gates are refused as ``checksum_mismatch`` however
they differ. Nothing here imports torch or runs artifact code.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pydantic

from handlers.archive import ArchiveLimits, MarInfo, extract_zip, handler_file, inspect_mar
from schemas.digest import DIGEST_PREFIX, manifest_digest
from schemas.errors import ArtifactRejected, Reason
from schemas.manifest import MANIFEST_FILENAME, MAX_MANIFEST_BYTES, Manifest, ModelFormat, check_relative_path


@dataclass(frozen=True, kw_only=True)
class VerifiedArtifact:
    """A model directory whose files were all checked; what the pod serves and under which name."""

    name: str
    version: str
    model_dir: Path
    manifest: Manifest | None = None
    mar: MarInfo | None = None

    @property
    def handler(self) -> str:
        """The handler spec: a built-in name, or a ``.py`` file inside ``model_dir``."""
        if self.mar is not None:
            return self.mar["handler"]
        assert self.manifest is not None
        return self.manifest.handler

    @property
    def has_handler_code(self) -> bool:
        """True when serving this artifact means running Python code that came with it."""
        if self.mar is not None:
            return handler_file(self.mar["handler"]) is not None or self.mar["model_file"] is not None
        assert self.manifest is not None
        return self.manifest.handler.endswith(".py")

    @property
    def has_model_code(self) -> bool:
        """True when serving this artifact runs a program that came with it (handler code, ``.mar``, TorchScript)."""
        if self.mar is not None:
            return True
        assert self.manifest is not None
        return self.manifest.has_model_code


def _reject_symlinks(root: Path) -> None:
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink():
                relative = entry.relative_to(root).as_posix()
                raise ArtifactRejected(f"{relative} is a symbolic link", reason=Reason.UNSAFE_SYMLINK,
                                       file=relative)


def read_manifest(root: Path) -> Manifest:
    """Parse ``root/manifest.json``, mapping each way it can be wrong to its reason code."""
    path = root / MANIFEST_FILENAME
    if not path.is_file():
        raise ArtifactRejected(f"{MANIFEST_FILENAME} is missing", reason=Reason.MANIFEST_MISSING,
                               file=MANIFEST_FILENAME)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactRejected(f"{MANIFEST_FILENAME} is larger than {MAX_MANIFEST_BYTES} bytes",
                               reason=Reason.MANIFEST_TOO_LARGE, file=MANIFEST_FILENAME)
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactRejected(f"{MANIFEST_FILENAME} is not valid JSON: {e}",
                               reason=Reason.MANIFEST_INVALID_JSON, file=MANIFEST_FILENAME) from e
    files = document.get("files") if isinstance(document, dict) else None
    # Path escapes get their own reason rather than the generic "invalid manifest" pydantic would give.
    for name in files if isinstance(files, dict) else ():
        try:
            check_relative_path(name)
        except ValueError as e:
            raise ArtifactRejected(str(e), reason=Reason.UNSAFE_PATH, file=str(name)) from e
    try:
        return Manifest.model_validate(document)
    except pydantic.ValidationError as e:
        raise ArtifactRejected(f"{MANIFEST_FILENAME} is invalid: {e.errors(include_url=False)}",
                               reason=Reason.MANIFEST_INVALID, file=MANIFEST_FILENAME) from e


def _verify_file(root: Path, relative: str, *, size: int, sha256: str) -> None:
    path = root / relative
    try:
        # O_NOFOLLOW on the last component; the walk already refused links above it.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as e:
        raise ArtifactRejected(f"{relative} is listed in the manifest but missing", reason=Reason.FILE_MISSING,
                               file=relative) from e
    except OSError as e:
        raise ArtifactRejected(f"{relative} cannot be opened safely: {e}", reason=Reason.UNSAFE_SYMLINK,
                               file=relative) from e
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactRejected(f"{relative} is not a regular file", reason=Reason.UNSAFE_PATH, file=relative)
        if info.st_size != size:
            raise ArtifactRejected(f"{relative} has {info.st_size} bytes, the manifest says {size}",
                                   reason=Reason.SIZE_MISMATCH, file=relative)
        actual = hashlib.file_digest(fh, "sha256").hexdigest()
    if actual != sha256:
        raise ArtifactRejected(f"{relative} has sha256 {actual}, the manifest says {sha256}",
                               reason=Reason.CHECKSUM_MISMATCH, file=relative)


def _check_digest(manifest: Manifest, expect_digest: str) -> None:
    actual = manifest_digest(manifest)
    if actual != expect_digest:
        raise ArtifactRejected(f"{MANIFEST_FILENAME} has digest {actual}, registered {expect_digest}: these are "
                               "not the bytes that were registered", reason=Reason.CHECKSUM_MISMATCH,
                               file=MANIFEST_FILENAME,
                               details={"expected": expect_digest, "actual": actual},
                               hint="Versions are immutable: upload the new model under a new version.")


def verify_model_dir(root: Path, *, expect_digest: str | None = None) -> Manifest:
    """Check a model directory completely (links, manifest, every file's size and checksum); return its manifest.

    With ``expect_digest`` the manifest must be the registered one, and any file that differs from it is a
    ``checksum_mismatch``: the pod holds other bytes than those registered, whichever way they differ.
    """
    _reject_symlinks(root)
    manifest = read_manifest(root)
    if expect_digest is not None:
        _check_digest(manifest, expect_digest)
    for relative, entry in manifest.files.items():
        try:
            _verify_file(root, relative, size=entry.size, sha256=entry.sha256)
        except ArtifactRejected as e:
            if expect_digest is None or e.reason not in (Reason.SIZE_MISMATCH, Reason.FILE_MISSING):
                raise
            raise ArtifactRejected(f"{e.message}; not the bytes that were registered",
                                   reason=Reason.CHECKSUM_MISMATCH, file=relative,
                                   details={"found": str(e.reason)}) from e
    return manifest


def _unpack_mar(path: Path, *, work_dir: Path, limits: ArchiveLimits,
                expect_sha256: str | None) -> tuple[MarInfo, Path]:
    info = inspect_mar(path, limits=limits)
    if expect_sha256 is not None and info["sha256"] != expect_sha256:
        raise ArtifactRejected(f"{path.name} has sha256 {info['sha256']}, expected {expect_sha256}",
                               reason=Reason.CHECKSUM_MISMATCH, file=path.name)
    model_dir = work_dir / "model"
    extract_zip(path, model_dir, limits=limits)
    return info, model_dir


def _mar_in_dir(root: Path, manifest: Manifest) -> Path:
    archives = [name for name in manifest.files if name.endswith(".mar")]
    if len(archives) != 1:
        raise ArtifactRejected(f"a 'mar' model directory must list exactly one .mar file, it lists {archives}",
                               reason=Reason.MANIFEST_INVALID, file=MANIFEST_FILENAME)
    return root / archives[0]


def open_artifact(path: Path, *, work_dir: Path, allow_model_code: bool, limits: ArchiveLimits | None = None,
                  expect_sha256: str | None = None, expect_digest: str | None = None) -> VerifiedArtifact:
    """Verify ``path`` (model directory or ``.mar``) and return where its checked files are.

    ``expect_digest``: the digest recorded at registration; for a bare ``.mar`` it is the archive's sha256.

    ``.mar`` archives are unpacked under ``work_dir``. A model directory whose format is ``mar`` is served under
    the manifest's name and version; a bare ``.mar`` under the name in its ``MAR-INF/MANIFEST.json``.
    """
    limits = limits or ArchiveLimits()
    if path.is_symlink():
        raise ArtifactRejected(f"{path} is a symbolic link", reason=Reason.UNSAFE_SYMLINK, file=path.name)
    if path.is_dir():
        manifest = verify_model_dir(path, expect_digest=expect_digest)
        if manifest.format is ModelFormat.MAR:
            mar, model_dir = _unpack_mar(_mar_in_dir(path, manifest), work_dir=work_dir, limits=limits,
                                         expect_sha256=None)
            artifact = VerifiedArtifact(name=manifest.name, version=manifest.version, model_dir=model_dir,
                                        manifest=manifest, mar=mar)
        else:
            artifact = VerifiedArtifact(name=manifest.name, version=manifest.version, model_dir=path,
                                        manifest=manifest)
    elif path.is_file():
        if expect_digest is not None:
            expect_sha256 = expect_digest.removeprefix(DIGEST_PREFIX)
        mar, model_dir = _unpack_mar(path, work_dir=work_dir, limits=limits, expect_sha256=expect_sha256)
        artifact = VerifiedArtifact(name=mar["model_name"], version=mar["model_version"], model_dir=model_dir,
                                    mar=mar)
    else:
        raise ArtifactRejected(f"{path} does not exist", reason=Reason.FILE_MISSING, file=path.name)
    if artifact.has_model_code and not allow_model_code:
        raise ArtifactRejected(
            f"{artifact.name}:{artifact.version} carries model code (handler {artifact.handler}, format "
            f"{artifact.manifest.format if artifact.manifest else 'mar'}) and this pod runs with --no-model-code",
            reason=Reason.MODEL_CODE_FORBIDDEN, file=artifact.handler,
            hint="Ship weights only (state_dict or safetensors) for a built-in architecture with a built-in handler, "
                 "or allow model code in the release policy.")
    return artifact
