"""``image_classifier``: JPEG/PNG (raw bytes or base64) → resize and normalise → top-k labels.

Settings come from the manifest's ``extra``: ``image_size`` (int or [height, width], default 224), ``mean`` and
``std`` (default ImageNet), ``top_k`` (default 5), ``apply_softmax`` (default true), ``max_image_pixels``.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from handlers.base import HandlerContext, InferenceRequest
from handlers.builtin.common import Classifier, ClassifierBatch, ClassifierHandler, require_manifest
from handlers.models import load_model
from handlers.runner import ModelRunner
from handlers.tensors import bad_request

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _image_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    text = str(item)
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request("invalid_image", f"image is neither raw bytes nor valid base64: {e}") from e


class ImageClassifierHandler(ClassifierHandler):
    """Decodes each image with Pillow, stacks the batch as NCHW float, and answers top-k labels per image."""

    input_name: str

    def initialize(self, context: HandlerContext) -> None:
        """Load the model and read the image settings from ``extra``."""
        super().initialize(context)
        manifest = require_manifest(context)
        extra = manifest.extra
        size = extra.get("image_size", 224)
        self.height, self.width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.mean = np.asarray(extra.get("mean", _IMAGENET_MEAN), dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(extra.get("std", _IMAGENET_STD), dtype=np.float32).reshape(3, 1, 1)
        self.max_pixels = int(extra.get("max_image_pixels", 40_000_000))
        self.input_name = manifest.inputs[0].name
        self.classifier = Classifier(labels=manifest.labels, top_k=int(extra.get("top_k", 5)),
                                     apply_softmax=bool(extra.get("apply_softmax", True)),
                                     output_name=manifest.outputs[0].name)
        self.runner = ModelRunner.for_context(load_model(manifest, context.model_dir), context)

    def _decode(self, data: bytes) -> np.ndarray[Any, Any]:
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > self.max_pixels:
                    raise bad_request("invalid_image", f"image has {image.width}x{image.height} pixels, the "
                                      f"limit is {self.max_pixels}")
                rgb = image.convert("RGB").resize((self.width, self.height), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise bad_request("invalid_image", f"not a readable JPEG/PNG image: {e}") from e
        pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (pixels - self.mean) / self.std

    def _images(self, request: InferenceRequest) -> tuple[list[bytes], bool]:
        if self.input_name in request.inputs:
            return [_image_bytes(item) for item in request.inputs[self.input_name].ravel()], False
        if request.raw is not None:
            return [request.raw], True
        raise bad_request("missing_input", f"send an image body or a BYTES input {self.input_name!r}",
                          inputs=[self.input_name])

    def preprocess(self, batch: Sequence[InferenceRequest]) -> ClassifierBatch:
        """Decode and normalise every image of every request into one NCHW tensor."""
        pixels: list[np.ndarray[Any, Any]] = []
        sizes = []
        unwrap = []
        for request in batch:
            images, single = self._images(request)
            pixels.extend(self._decode(data) for data in images)
            sizes.append(len(images))
            unwrap.append(single)
        return ClassifierBatch(torch.from_numpy(np.stack(pixels)), sizes, unwrap)

    def warmup(self) -> None:
        """Forward passes on blank images of the configured size."""
        self.runner.warm(lambda n: (torch.zeros(n, 3, self.height, self.width),))
