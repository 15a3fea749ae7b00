"""The manifest v1 a bare ``.mar`` registers under, made from what the archive says about itself.

A ``models/<name>/<version>.mar`` carries no ``manifest.json``: its handler, serialized file, extra files and
model-config come from ``MAR-INF/MANIFEST.json`` (vetted by ``release.inspection.inspect_mar``). Extra files
``eval.npz`` and ``reference.npz`` become the gates' eval set and the drift reference, and the eval set's ``x``
gives the input signature; without them the signature is opaque bytes and only smoke and latency gates apply.
Pure: no I/O, no policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from release.inspection import MAR_EVAL, MAR_REFERENCE, MarContents, mar_members
from schemas.errors import ArtifactRejected, Reason
from schemas.manifest import Datatype, FileEntry, Manifest, ModelFormat, TensorSpec

_DATATYPES = {"float32": Datatype.FP32, "float64": Datatype.FP64, "float16": Datatype.FP16,
              "int64": Datatype.INT64, "int32": Datatype.INT32, "int16": Datatype.INT16, "int8": Datatype.INT8,
              "uint8": Datatype.UINT8, "bool": Datatype.BOOL}


def _signature(contents: MarContents) -> tuple[list[TensorSpec], list[TensorSpec]]:
    eval_set = contents.samples.get(MAR_EVAL)
    if eval_set is None:
        return ([TensorSpec(name="data", datatype=Datatype.BYTES, shape=[-1])],
                [TensorSpec(name="output", datatype=Datatype.BYTES, shape=[-1])])
    x = eval_set["x"]
    datatype = _DATATYPES.get(np.dtype(x.dtype).name, Datatype.FP32)
    shape = [-1, *x.shape[1:]][:8] if x.shape else [-1]
    # Outputs are whatever the handler returns per row: any width, classification scores or one value.
    return ([TensorSpec(name="input", datatype=datatype, shape=shape)],
            [TensorSpec(name="output", datatype=Datatype.FP32, shape=[-1, -1])])


def mar_manifest(*, model: str, version: str, contents: MarContents, sha256: str, size: int) -> Manifest:
    """The manifest of ``models/<model>/<version>.mar``; refused when the archive names another model."""
    info = contents.info
    if info["model_name"] != model:
        raise ArtifactRejected(
            f"{version}.mar names model {info['model_name']!r} but sits under models/{model}/",
            reason=Reason.MANIFEST_PATH_MISMATCH, file="MAR-INF/MANIFEST.json",
            hint=f"Build it with torch-model-archiver --model-name {model}, or upload it under "
                 f"models/{info['model_name']}/.")
    inputs, outputs = _signature(contents)
    mar: dict[str, Any] = {key: info[key] for key in (
        "model_name", "model_version", "handler", "serialized_file", "model_file", "requirements_file",
        "config_file", "runtime", "archiver_version", "entries", "uncompressed_bytes")}
    mar["members"] = mar_members(contents)
    try:
        return Manifest(
            name=model, version=version, format=ModelFormat.MAR, handler=info["handler"],
            files={f"{version}.mar": FileEntry(sha256=sha256, size=size)}, inputs=inputs, outputs=outputs,
            eval=MAR_EVAL if MAR_EVAL in contents.samples else None,
            reference=MAR_REFERENCE if MAR_REFERENCE in contents.samples else None,
            description=f"TorchServe archive {info['model_name']} {info['model_version']}", extra={"mar": mar})
    except ValidationError as exc:
        raise ArtifactRejected(f"{version}.mar cannot be described as a manifest: {exc.errors()[0]['msg']}",
                               reason=Reason.MANIFEST_INVALID, file="MAR-INF/MANIFEST.json") from exc
