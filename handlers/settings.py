"""The pod server's settings: its command line, parsed once into one frozen object.

The only environment variables read are ``POD_NO_MODEL_CODE`` and its older name ``POD_NO_HANDLER_CODE``
(``1``/``true``), the deployment-wide way to forbid artifact code that a command line cannot forget.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from handlers.runner import COMPILE_MODES

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NO_MODEL_CODE_ENVS = ("POD_NO_MODEL_CODE", "POD_NO_HANDLER_CODE")


@dataclass(frozen=True, kw_only=True)
class PodSettings:
    """Everything the pod server is told at start."""

    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 32
    max_batch_delay_ms: float = 2.0
    queue_size: int = 256
    request_timeout_s: float = 30.0
    max_body_bytes: int = 64 << 20
    device: str = "auto"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: str = "none"
    torch_threads: int | None = None
    allow_model_code: bool = True
    expect_sha256: str | None = None
    expect_digest: str | None = None
    work_dir: Path | None = None
    drain_timeout_s: float = 30.0
    log_format: str = "console"
    log_level: str = "info"
    http_workers: int = 1
    handoff_mb: int = 64
    batch_workers: int = 1
    record_predictions: bool = False
    prediction_sample_rate: float = 1.0

    @property
    def torch_dtype(self) -> torch.dtype:
        """The weights' precision as a torch dtype."""
        return DTYPES[self.dtype]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def _digest(text: str) -> str:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a digest (sha256: and 64 hex digits)")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m handlers.server`` command line."""
    parser = argparse.ArgumentParser(prog="python -m handlers.server", description="Serve one model artifact.")
    parser.add_argument("--artifact", type=Path, required=True, help="model directory or .mar file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-batch-size", type=_positive_int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=_non_negative_float, default=2.0)
    parser.add_argument("--queue-size", type=_positive_int, default=256)
    parser.add_argument("--request-timeout-s", type=_non_negative_float, default=30.0)
    parser.add_argument("--max-body-bytes", type=_positive_int, default=64 << 20)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for image models")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="none",
                        help="torch.compile mode; reduce-overhead uses CUDA graphs (batches padded to buckets)")
    parser.add_argument("--torch-threads", type=_positive_int, default=None, help="torch intra-op threads")
    parser.add_argument("--no-model-code", "--no-handler-code", dest="no_model_code", action="store_true",
                        help="refuse artifacts that carry code: handler files, .mar, TorchScript")
    parser.add_argument("--expect-sha256", default=None, help="refuse a .mar whose sha256 differs")
    parser.add_argument("--expect-digest", default=None, type=_digest,
                        help="the digest recorded at registration (sha256:HEX); refuse any other bytes")
    parser.add_argument("--work-dir", type=Path, default=None, help="where .mar archives are unpacked")
    parser.add_argument("--drain-timeout-s", type=_non_negative_float, default=30.0)
    parser.add_argument("--log-format", choices=("json", "console"), default="console")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    parser.add_argument("--http-workers", type=_positive_int, default=1,
                        help="HTTP front processes sharing the port and feeding one model process (1: one process)")
    parser.add_argument("--handoff-mb", type=_non_negative_int, default=64,
                        help="shared memory per HTTP front for request tensors (0: send them through the pipe)")
    parser.add_argument("--batch-workers", type=_positive_int, default=1,
                        help="threads running batches at once, so one batch is prepared while another runs "
                             "(built-in handlers without --compile only)")
    parser.add_argument("--record-predictions", action="store_true",
                        help="print sampled prediction records as JSON lines for the drift monitor "
                             "(handlers.prediction_emitter); for routing that bypasses the Python router")
    parser.add_argument("--prediction-sample-rate", type=_rate, default=1.0,
                        help="share of prediction requests recorded (the policy's drift.sample_rate)")
    return parser


def parse_settings(argv: Sequence[str] | None, *, environ: Mapping[str, str]) -> PodSettings:
    """Settings from the command line; ``POD_NO_MODEL_CODE`` can only forbid code, never allow it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_workers > 1 and args.compile != "none":
        # A compiled module (CUDA graphs above all) replays shared static buffers: one batch at a time.
        parser.error("--batch-workers above 1 cannot be combined with --compile; use one or the other")
    forbid_env = any(environ.get(name, "").strip().lower() in ("1", "true", "yes") for name in NO_MODEL_CODE_ENVS)
    return PodSettings(
        artifact=args.artifact, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms, queue_size=args.queue_size,
        request_timeout_s=args.request_timeout_s, max_body_bytes=args.max_body_bytes, device=args.device,
        dtype=args.dtype, channels_last=args.channels_last, compile=args.compile,
        torch_threads=args.torch_threads, allow_model_code=not (args.no_model_code or forbid_env),
        expect_sha256=args.expect_sha256, expect_digest=args.expect_digest, work_dir=args.work_dir,
        drain_timeout_s=args.drain_timeout_s,
        log_format=args.log_format, log_level=args.log_level, http_workers=args.http_workers,
        handoff_mb=args.handoff_mb, batch_workers=args.batch_workers,
        record_predictions=args.record_predictions, prediction_sample_rate=args.prediction_sample_rate)
