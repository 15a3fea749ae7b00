"""Looking inside untrusted files without running them: zip archives and pickles.

Intake runs in the control plane, where no artifact code may ever execute, so everything here reads bytes only:
a zip's central directory (entry names, sizes, compression ratios, link bits) and a pickle's opcode stream
(which globals it would import). Extraction and loading happen only in the serving pod.
"""

from __future__ import annotations

import json
import pickletools
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from schemas.errors import ArtifactRejected, Reason
from schemas.manifest import check_relative_path

MAX_ENTRIES = 10_000
MAX_UNCOMPRESSED = 8 << 30
MAX_RATIO = 200
MAX_PICKLE_BYTES = 64 << 20

#: Globals a weights-only checkpoint may reference (what ``torch.load(weights_only=True)`` also admits).
SAFE_GLOBAL_PREFIXES = ("torch._utils._rebuild_", "torch._tensor._rebuild_", "torch.serialization._get_layout")
SAFE_GLOBALS = frozenset({
    "collections.OrderedDict", "torch.Size", "torch.device", "torch.dtype", "builtins.set", "builtins.frozenset",
    "builtins.slice", "torch.nn.parameter.Parameter", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch.per_tensor_affine", "torch.contiguous_format", "torch.channels_last", "torch.preserve_format",
})
_STORAGE_SUFFIX = "Storage"


@dataclass(frozen=True)
class ZipEntry:
    """A member of a checked archive."""

    name: str
    size: int


def check_zip(handle: IO[bytes], *, label: str, max_entries: int = MAX_ENTRIES,
              max_uncompressed: int = MAX_UNCOMPRESSED) -> list[ZipEntry]:
    """Refuse archives that could escape their folder, hide links, or expand far beyond their size."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactRejected(f"{label} is not a valid zip archive: {exc}", reason=Reason.ARCHIVE_INVALID,
                               file=label) from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > max_entries:
            raise ArtifactRejected(f"{label} has {len(infos)} entries, more than the limit of {max_entries}",
                                   reason=Reason.ARCHIVE_TOO_MANY_ENTRIES, file=label)
        total = 0
        entries = []
        for info in infos:
            name = info.filename
            if info.is_dir():
                continue
            try:
                check_relative_path(name.rstrip("/"))
            except ValueError as exc:
                raise ArtifactRejected(f"{label} has an entry that escapes the archive: {exc}",
                                       reason=Reason.UNSAFE_PATH, file=label,
                                       details={"entry": name}) from exc
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ArtifactRejected(f"{label} contains a symbolic link {name!r}", reason=Reason.UNSAFE_SYMLINK,
                                       file=label, details={"entry": name})
            total += info.file_size
            ratio = info.file_size / max(info.compress_size, 1)
            if total > max_uncompressed or (info.file_size > (1 << 20) and ratio > MAX_RATIO):
                raise ArtifactRejected(
                    f"{label} expands to more than allowed (entry {name!r}: {info.file_size} bytes, "
                    f"ratio {ratio:.0f}:1)", reason=Reason.ARCHIVE_TOO_LARGE, file=label, details={"entry": name})
            entries.append(ZipEntry(name=name, size=info.file_size))
        return entries


def read_zip_member(handle: IO[bytes], member: str, *, limit: int) -> bytes:
    """One member's bytes, refusing to read past ``limit`` whatever the header claims."""
    with zipfile.ZipFile(handle) as archive, archive.open(member) as src:
        data = src.read(limit + 1)
    if len(data) > limit:
        raise ArtifactRejected(f"{member} is larger than {limit} bytes", reason=Reason.FILE_TOO_LARGE, file=member)
    return data


def _globals(data: bytes) -> Iterator[str]:
    """Every ``module.name`` a pickle would import, from its opcodes alone."""
    strings: list[str] = []
    for opcode, arg, _pos in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            yield f"{module}.{name}"
        elif opcode.name == "STACK_GLOBAL":
            if len(strings) < 2:
                yield "<unknown STACK_GLOBAL>"
            else:
                yield f"{strings[-2]}.{strings[-1]}"
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
        elif opcode.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"):
            continue
        elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
            # A memoised string reused as a module name cannot be tracked cheaply: treat as unknown.
            strings.append("<memo>")


def _is_safe(global_name: str) -> bool:
    if global_name in SAFE_GLOBALS or global_name.startswith(SAFE_GLOBAL_PREFIXES):
        return True
    module, _, name = global_name.rpartition(".")
    return module == "torch" and name.endswith(_STORAGE_SUFFIX)


def check_weights_pickle(handle: IO[bytes], *, label: str) -> None:
    """Refuse a torch checkpoint whose pickle would import anything beyond tensors and containers."""
    entries = check_zip(handle, label=label)
    pickles = [e.name for e in entries if e.name.endswith("/data.pkl") or e.name == "data.pkl"]
    if not pickles:
        raise ArtifactRejected(f"{label} is not a torch checkpoint (no data.pkl inside)",
                               reason=Reason.ARCHIVE_INVALID, file=label)
    handle.seek(0)
    data = read_zip_member(handle, pickles[0], limit=MAX_PICKLE_BYTES)
    try:
        unsafe = sorted({g for g in _globals(data) if not _is_safe(g)})
    except (ValueError, EOFError) as exc:
        raise ArtifactRejected(f"{label} has a corrupt pickle: {exc}", reason=Reason.UNSAFE_PICKLE,
                               file=label) from exc
    if unsafe:
        raise ArtifactRejected(f"{label} would import {', '.join(unsafe[:5])} when loaded; only tensors and "
                               "plain containers are allowed in weights", reason=Reason.UNSAFE_PICKLE, file=label,
                               details={"globals": unsafe[:20]})


def read_mar_manifest(handle: IO[bytes], *, label: str) -> dict[str, Any]:
    """``MAR-INF/MANIFEST.json`` of a TorchServe archive, after the archive passed ``check_zip``."""
    entries = check_zip(handle, label=label)
    if not any(e.name == "MAR-INF/MANIFEST.json" for e in entries):
        raise ArtifactRejected(f"{label} has no MAR-INF/MANIFEST.json: not a torch-model-archiver archive",
                               reason=Reason.ARCHIVE_INVALID, file=label)
    handle.seek(0)
    raw = read_zip_member(handle, "MAR-INF/MANIFEST.json", limit=1 << 20)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ArtifactRejected(f"{label}: MAR-INF/MANIFEST.json is not JSON: {exc}",
                               reason=Reason.ARCHIVE_INVALID, file=label) from exc
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or not isinstance(model, dict) or not model.get("handler"):
        raise ArtifactRejected(f"{label}: MAR-INF/MANIFEST.json has no model.handler",
                               reason=Reason.ARCHIVE_INVALID, file=label)
    members = {e.name for e in entries}
    for key in ("serializedFile", "handler"):
        value = model.get(key)
        if isinstance(value, str) and value.endswith((".py", ".pt", ".pth", ".bin")) and value not in members:
            raise ArtifactRejected(f"{label}: {key} {value!r} is not inside the archive",
                                   reason=Reason.ARCHIVE_INVALID, file=label)
    return dict(manifest)
