"""Artifact contract v1: the manifest a team uploads beside its model files.

Validation here is total: a manifest that parses is safe to act on (names match the path grammar, every file
path stays inside the artifact, tensor signatures are well formed). The checks that need the bytes (sizes,
checksums) happen in intake, which owns the I/O.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
VERSION_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MANIFEST_FILENAME = "manifest.json"
REJECTED_FILENAME = "REJECTED.json"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 1000

#: Handlers every serving pod ships; any other handler must be a ``.py`` file inside the artifact.
BUILTIN_HANDLERS = frozenset({"tabular", "image_classifier", "text_classifier"})

ModelName = Annotated[str, Field(pattern=NAME_PATTERN)]
VersionName = Annotated[str, Field(pattern=VERSION_PATTERN)]

_RESERVED_VERSIONS = {".", ".."}
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class ModelFormat(StrEnum):
    """How the weights are stored."""

    TORCHSCRIPT = "torchscript"
    STATE_DICT = "state_dict"
    MAR = "mar"
    SAFETENSORS = "safetensors"


class Datatype(StrEnum):
    """Open Inference Protocol tensor datatypes."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


def check_relative_path(path: str) -> str:
    """Return ``path`` if it names a file strictly inside an artifact, else raise ``ValueError``.

    Rejects absolute paths, drive letters, backslashes, ``..`` and ``.`` segments, empty segments and NUL:
    anything that could resolve outside the artifact folder on any platform.
    """
    if not path or len(path) > 512:
        raise ValueError("file path must be 1 to 512 characters")
    if "\x00" in path or "\\" in path:
        raise ValueError(f"file path {path!r} contains a NUL or a backslash")
    if path.startswith("/") or _WINDOWS_DRIVE.match(path):
        raise ValueError(f"file path {path!r} is absolute")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"file path {path!r} has an empty, '.' or '..' segment")
    if PurePosixPath(path).name in (MANIFEST_FILENAME, REJECTED_FILENAME) and len(parts) == 1:
        raise ValueError(f"file path {path!r} is reserved")
    return path


class FileEntry(BaseModel):
    """One file of the artifact, as the uploader declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    size: Annotated[int, Field(ge=0)]


class TensorSpec(BaseModel):
    """An input or output tensor, in Open Inference Protocol terms (-1 = any size)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]
    datatype: Datatype
    shape: Annotated[list[int], Field(min_length=0, max_length=8)]

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        for dim in shape:
            if dim < -1 or dim == 0:
                raise ValueError(f"shape dimension {dim} must be -1 (any) or positive")
        return shape


class Manifest(BaseModel):
    """``models/<name>/<version>/manifest.json``, contract v1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    name: ModelName
    version: VersionName
    format: ModelFormat
    handler: Annotated[str, Field(min_length=1, max_length=256)]
    files: Annotated[dict[str, FileEntry], Field(min_length=1, max_length=MAX_FILES)]
    inputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=64)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=64)]
    labels: list[str] | None = None
    eval: str | None = None
    reference: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    architecture: str | None = None
    description: Annotated[str, Field(max_length=4096)] = ""
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _not_dots(cls, version: str) -> str:
        if version in _RESERVED_VERSIONS:
            raise ValueError("version must not be '.' or '..'")
        return version

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for path in files:
            check_relative_path(path)
        return files

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for role in ("eval", "reference"):
            path = getattr(self, role)
            if path is not None and path not in self.files:
                raise ValueError(f"{role} file {path!r} is not listed in files")
        if self.format in (ModelFormat.STATE_DICT, ModelFormat.SAFETENSORS) and not self.architecture:
            raise ValueError(f"format {self.format} needs 'architecture' (a built-in architecture name)")
        if self.handler.endswith(".py"):
            check_relative_path(self.handler)
            if self.handler not in self.files:
                raise ValueError(f"handler file {self.handler!r} is not listed in files")
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        names = [t.name for t in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError("output names must be unique")
        return self

    @property
    def has_handler_code(self) -> bool:
        """True when the handler is code shipped inside the artifact rather than a built-in."""
        return self.handler.endswith(".py") or self.format is ModelFormat.MAR

    @property
    def has_model_code(self) -> bool:
        """True when serving runs a program that came with the artifact: handler code, a ``.mar`` or TorchScript.

        Only weights-only ``state_dict`` and ``safetensors`` loaded into a built-in architecture are code-free.
        """
        return self.has_handler_code or self.format not in (ModelFormat.STATE_DICT, ModelFormat.SAFETENSORS)


def artifact_prefix(name: str, version: str) -> str:
    """The bucket prefix under which a model directory lives."""
    return f"models/{name}/{version}/"
