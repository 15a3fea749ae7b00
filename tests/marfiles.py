"""TorchServe archives built by the real ``torch-model-archiver``, and hand-made pickles and zips for attacks."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

#: A module-level TorchServe handler over a TorchScript digits model: one row of class scores per input row.
SCORES_HANDLER = '''
"""TorchServe handle(data, context): TorchScript digits model, returns each row's class probabilities."""
import os

import torch

_model = None


def handle(data, context):
    global _model
    if _model is None:
        properties = context.system_properties
        _model = torch.jit.load(os.path.join(properties["model_dir"], context.manifest["model"]["serializedFile"]))
    if data is None:
        return None
    answers = []
    for row in data:
        body = row.get("body")
        rows = torch.tensor(body["input"] if isinstance(body, dict) else body, dtype=torch.float32)
        with torch.no_grad():
            answers.append(_model(rows.reshape(-1, 64)).tolist())
    return answers
'''


def build_mar(tmp: Path, *, name: str, version: str, serialized: bytes, handler: str = SCORES_HANDLER,
              extra: dict[str, bytes] | None = None, requirements: str | None = None,
              config: str | None = None, model_file: str | None = None, serialized_name: str = "model.pt") -> Path:
    """``<tmp>/<name>.mar`` made by torch-model-archiver from these parts (files written to a scratch folder)."""
    work = tmp / f"{name}-{version}-src"
    work.mkdir(parents=True)
    (work / "handler.py").write_text(handler)
    (work / serialized_name).write_bytes(serialized)
    args = [str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", name, "--version", version,
            "--serialized-file", str(work / serialized_name), "--handler", str(work / "handler.py"),
            "--export-path", str(tmp), "--force"]
    if model_file is not None:
        (work / "model.py").write_text(model_file)
        args += ["--model-file", str(work / "model.py")]
    if extra:
        for file_name, data in extra.items():
            (work / file_name).write_bytes(data)
        args += ["--extra-files", ",".join(str(work / f) for f in extra)]
    if requirements is not None:
        (work / "requirements.txt").write_text(requirements)
        args += ["--requirements-file", str(work / "requirements.txt")]
    if config is not None:
        (work / "model-config.yaml").write_text(config)
        args += ["--config-file", str(work / "model-config.yaml")]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    return tmp / f"{name}.mar"


def decoy_pickle(command: str) -> bytes:
    """A pickle that calls ``os.system(command)`` through STACK_GLOBAL, after pushing and POPping two harmless
    names that a scanner reading the last two strings takes for the import."""
    def short(text: str) -> bytes:
        raw = text.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw

    return (pickle.PROTO + b"\x04" + short("os") + short("system") + short("collections") + short("OrderedDict")
            + pickle.POP + pickle.POP + pickle.STACK_GLOBAL + short(command) + pickle.TUPLE1 + pickle.REDUCE
            + pickle.STOP)


def torch_zip(members: dict[str, bytes]) -> bytes:
    """A zip laid out like torch.save's (``archive/...`` members), holding exactly ``members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"archive/{name}", data)
        zf.writestr("archive/version", "3\n")
    return buffer.getvalue()


def raw_zip(entries: list[tuple[str, bytes]], *, encrypted: str | None = None, symlink: str | None = None,
            compress: bool = True) -> bytes:
    """A zip of ``entries`` in order (names may repeat), optionally flagging one entry encrypted or a link."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            if name == symlink:
                info.external_attr = 0o120777 << 16
            zf.writestr(info, data)
    data = bytearray(buffer.getvalue())
    if encrypted is not None:
        _flag_encrypted(data, encrypted.encode())
    return bytes(data)


def _flag_encrypted(data: bytearray, name: bytes) -> None:
    """Set the "encrypted" bit of ``name`` in its local header and central directory entry (zipfile cannot)."""
    for signature, flags_at, name_len_at, name_at in ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)):
        start = data.find(signature)
        while start != -1:
            length = int.from_bytes(data[start + name_len_at:start + name_len_at + 2], "little")
            if bytes(data[start + name_at:start + name_at + length]) == name:
                data[start + flags_at] |= 0x1
            start = data.find(signature, start + 4)
