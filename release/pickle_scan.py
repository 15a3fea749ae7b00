"""Which globals the pickles in a weights file would import, judged against what weights may need.

picklescan disassembles every pickle of a stream (several concatenated ones included) and resolves the module
and name each ``GLOBAL``/``STACK_GLOBAL`` pushes, following the memo and treating anything it cannot resolve
(a ``POP``ped decoy, a non-string operand) as ``unknown``. We then admit only the globals a weights-only
``torch.load`` admits, plus ``__torch__.*`` in TorchScript archives, whose classes ``torch.jit.load`` resolves
to compiled TorchScript, never to Python. Nothing here unpickles anything; the pod still loads with
``weights_only`` on top of this.
"""

from __future__ import annotations

import io
import zipfile
from typing import IO

from picklescan.scanner import scan_pickle_bytes

from schemas.archive_rules import ArchiveLimits, check_entries
from schemas.errors import ArtifactRejected, Reason

#: A pickle larger than this is refused rather than scanned: weights pickles are small, tensors live beside them.
MAX_PICKLE_BYTES = 64 << 20
#: Files that hold pickles when they are not TorchScript/torch zip archives.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

SAFE_GLOBAL_PREFIXES = ("torch._utils._rebuild_", "torch._tensor._rebuild_", "torch.serialization._get_layout")
SAFE_GLOBALS = frozenset({
    "collections.OrderedDict", "torch.Size", "torch.device", "torch.dtype", "builtins.set", "builtins.frozenset",
    "builtins.slice", "torch.nn.parameter.Parameter", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch.per_tensor_affine", "torch.contiguous_format", "torch.channels_last", "torch.preserve_format",
})
_TORCHSCRIPT_PREFIX = "__torch__."
_STORAGE_SUFFIX = "Storage"
_HINT = "Save weights with torch.save(model.state_dict()) or torch.jit.save: tensors and plain containers only."


def _is_safe(global_name: str, *, torchscript: bool) -> bool:
    if global_name in SAFE_GLOBALS or global_name.startswith(SAFE_GLOBAL_PREFIXES):
        return True
    if torchscript and global_name.startswith(_TORCHSCRIPT_PREFIX):
        return True
    module, _, name = global_name.rpartition(".")
    return module == "torch" and name.endswith(_STORAGE_SUFFIX)


def scan_pickle_stream(stream: IO[bytes], *, label: str, torchscript: bool = False, whole: bool = True) -> None:
    """Refuse every pickle in ``stream`` that imports more than tensors need.

    ``whole``: the stream must be pickles and nothing else (a zip member); otherwise trailing bytes that are not a
    pickle are tolerated (a legacy ``torch.save`` file keeps raw tensor bytes after its pickles).
    """
    try:
        result = scan_pickle_bytes(stream, label, multiple_pickles=True)
    except Exception as exc:  # picklescan raises plain ValueErrors on malformed STACK_GLOBALs; any failure refuses
        raise ArtifactRejected(f"{label} holds a pickle that cannot be scanned: {exc}", reason=Reason.UNSAFE_PICKLE,
                               file=label, hint=_HINT) from exc
    names = {f"{g.module}.{g.name}" for g in result.globals}
    unsafe = sorted(name for name in names if not _is_safe(name, torchscript=torchscript))
    if unsafe:
        raise ArtifactRejected(f"{label} would import {', '.join(unsafe[:5])} when loaded; only tensors and plain "
                               "containers are allowed in weights", reason=Reason.UNSAFE_PICKLE, file=label,
                               hint=_HINT, details={"globals": unsafe[:20]})
    if whole and result.scan_err:
        raise ArtifactRejected(f"{label} holds a pickle that does not parse", reason=Reason.UNSAFE_PICKLE,
                               file=label, hint=_HINT)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, label: str) -> bytes:
    if info.file_size > MAX_PICKLE_BYTES:
        raise ArtifactRejected(f"{label}: pickle {info.filename!r} is {info.file_size} bytes, over the "
                               f"{MAX_PICKLE_BYTES} bytes intake scans", reason=Reason.UNSAFE_PICKLE, file=label,
                               hint=_HINT)
    with archive.open(info) as member:
        return member.read(MAX_PICKLE_BYTES + 1)[:MAX_PICKLE_BYTES]


def scan_torch_zip(archive: zipfile.ZipFile, *, label: str, limits: ArchiveLimits) -> None:
    """Scan every ``.pkl`` member of a torch zip (state dict or TorchScript) after the shared zip rules."""
    files = check_entries(archive.infolist(), limits=limits)
    names = [info.filename for info in files]
    torchscript = any("/code/" in name or name.endswith("constants.pkl") for name in names)
    for info in files:
        if info.filename.endswith(".pkl"):
            data = _read_member(archive, info, label=label)
            scan_pickle_stream(io.BytesIO(data), label=f"{label}:{info.filename}", torchscript=torchscript)


def scan_weights(handle: IO[bytes], *, label: str, size: int, limits: ArchiveLimits) -> None:
    """Scan one weights file from its bytes: a torch zip member by member, else as concatenated raw pickles.

    Bytes that are no pickle at all pass (picklescan finds no globals): no unpickler can run anything from them.
    """
    head = handle.read(4)
    handle.seek(0)
    if head.startswith(b"PK"):
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ArtifactRejected(f"{label} is not a readable zip archive: {exc}", reason=Reason.ARCHIVE_INVALID,
                                   file=label) from exc
        with archive:
            scan_torch_zip(archive, label=label, limits=limits)
        return
    if size > MAX_PICKLE_BYTES:
        raise ArtifactRejected(f"{label} is a raw pickle of {size} bytes, over the {MAX_PICKLE_BYTES} bytes "
                               "intake scans", reason=Reason.UNSAFE_PICKLE, file=label,
                               hint="Re-save it with torch.save's default (zip) format.")
    scan_pickle_stream(io.BytesIO(handle.read(MAX_PICKLE_BYTES)), label=label, whole=False)
