"""The ``ts.utils.util`` helpers handlers use: label maps, and ``PredictionException`` to answer an HTTP error."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any


class PredictionException(Exception):
    """Raised by a handler to answer the request with ``error_code`` and ``message``."""

    def __init__(self, message: str, error_code: int = 500):
        super().__init__(message)
        self.message = message
        self.error_code = error_code


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """Classes defined in ``module`` itself (optionally only subclasses of ``parent_class``)."""
    classes = [member for _, member in inspect.getmembers(module, inspect.isclass)
               if member.__module__ == module.__name__]
    if parent_class is not None:
        classes = [cls for cls in classes if issubclass(cls, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, Any] | None:
    """``index_to_name.json`` as a dict of string index → label, or None when the file is absent."""
    path = Path(mapping_file_path)
    if not path.is_file():
        return None
    mapping = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(mapping, dict):
        raise ValueError(f"{path.name} must be a JSON object of index to label")
    return {str(key): value for key, value in mapping.items()}


def map_class_to_label(probs: list[list[float]], mapping: dict[str, Any] | None = None,
                       lbl_classes: list[list[int]] | None = None) -> list[dict[str, float]]:
    """``[{label: probability, ...}, ...]`` for rows of class probabilities and their class indices."""
    if lbl_classes is None:
        lbl_classes = [list(range(len(row))) for row in probs]
    results = []
    for row, classes in zip(probs, lbl_classes, strict=True):
        labels = [str(mapping.get(str(c), c)) if mapping else str(c) for c in classes]
        results.append(dict(zip(labels, row, strict=True)))
    return results
