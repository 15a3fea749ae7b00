"""TorchServe's ``Context``: what a ``.mar`` handler is told about its model and each request of the batch.

Same attribute and method names as TorchServe 0.12 (``manifest``, ``system_properties``, ``model_dir``,
``get_request_header``, ``set_response_content_type``, ``metrics``...), backed by the pod's own request data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class RequestProcessor:
    """One request's headers in, and the status and headers its response should carry out."""

    def __init__(self, request_header: Mapping[str, str]):
        self._request_header = dict(request_header)
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}

    def get_request_property(self, key: str) -> str | None:
        """One request header (case-insensitive)."""
        return self._request_header.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        """Every request header."""
        return self._request_header

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        """Set the response status."""
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        """The response status the handler asked for."""
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        """The reason phrase the handler asked for."""
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        """Set a response header."""
        self._response_header[key] = value

    def get_response_header(self, key: str) -> str | None:
        """One response header the handler set."""
        return self._response_header.get(key)

    def get_response_headers(self) -> dict[str, str]:
        """Every response header the handler set."""
        return self._response_header


class Metrics:
    """The handler-side metrics API; values go nowhere (the pod exports its own Prometheus metrics)."""

    def add_time(self, name: str, value: float, idx: Any = None, unit: str = "ms", **_: Any) -> None:
        """Accept and drop a timing metric."""

    def add_counter(self, name: str, value: float, idx: Any = None, **_: Any) -> None:
        """Accept and drop a counter metric."""

    def add_size(self, name: str, value: float, idx: Any = None, unit: str = "MB", **_: Any) -> None:
        """Accept and drop a size metric."""

    def add_percent(self, name: str, value: float, idx: Any = None, **_: Any) -> None:
        """Accept and drop a percentage metric."""

    def add_metric(self, name: str, value: float, unit: str = "", idx: Any = None, **_: Any) -> None:
        """Accept and drop any metric."""

    def add_error(self, name: str, value: Any) -> None:
        """Accept and drop an error metric."""


class Context:
    """Model-level facts plus per-request accessors indexed by the request's position in the batch."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict[str, Any], batch_size: int,
                 gpu: int | None, mms_version: str, limit_max_image_pixels: bool = True,
                 metrics: Metrics | None = None, model_yaml_config: dict[str, Any] | None = None):
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties: dict[str, Any] = {
            "model_dir": model_dir, "gpu_id": gpu, "batch_size": batch_size, "server_name": "MMS",
            "server_version": mms_version, "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] = {}
        self.request_processor: list[RequestProcessor] = []
        self.metrics = metrics or Metrics()
        self.model_yaml_config = model_yaml_config or {}
        self.stopping_criteria: Any = None
        self._started = time.time()

    @property
    def system_properties(self) -> dict[str, Any]:
        """``model_dir``, ``gpu_id``, ``batch_size``, ``server_name``, ``server_version``..."""
        return self._system_properties

    @property
    def model_dir(self) -> str:
        """Where the archive was unpacked."""
        return str(self._system_properties["model_dir"])

    def start_batch(self, ids: list[str], headers: list[Mapping[str, str]]) -> None:
        """Called by the pod before each batch: fresh per-request state."""
        self.request_ids = dict(enumerate(ids))
        self.request_processor = [RequestProcessor(h) for h in headers]

    def get_request_id(self, idx: int = 0) -> str | None:
        """The id of the request at ``idx`` in the batch."""
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> str | None:
        """One header of the request at ``idx``."""
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        """Every header of the request at ``idx``."""
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Content type of the response at ``idx``."""
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        """Content type set for the response at ``idx``."""
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        """Status code and phrase set for the response at ``idx``."""
        processor = self.request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Status of the response at ``idx``."""
        self.request_processor[idx].report_status(code, phrase)

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """A header on the response at ``idx``."""
        self.request_processor[idx].add_response_property(key, value)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        """Headers set on the response at ``idx``."""
        return self.request_processor[idx].get_response_headers()
