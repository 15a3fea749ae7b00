"""``text_classifier``: text → WordPiece ids (vocabulary shipped in the artifact) → top-k labels.

Settings in the manifest's ``extra``: ``vocab`` (default ``vocab.txt``), ``lowercase`` (default true),
``max_len`` (default 128), ``top_k`` (default 5), ``apply_softmax`` (default true). The model takes one int64
tensor of token ids, padded with the vocabulary's ``[PAD]`` id to the longest text in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from handlers.base import HandlerContext, InferenceRequest
from handlers.builtin.common import Classifier, ClassifierBatch, ClassifierHandler, require_manifest
from handlers.models import load_model
from handlers.runner import ModelRunner
from handlers.tensors import bad_request
from handlers.tokenizer import WordPieceTokenizer
from schemas.errors import ArtifactRejected, Reason


def _text(item: Any) -> str:
    try:
        return item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError as e:
        raise bad_request("invalid_text", f"text is not UTF-8: {e}") from e


class TextClassifierHandler(ClassifierHandler):
    """Tokenizes every text of the batch, pads once, runs one forward pass, answers top-k labels per text."""

    tokenizer: WordPieceTokenizer
    input_name: str

    def initialize(self, context: HandlerContext) -> None:
        """Load the model and the artifact's vocabulary."""
        super().initialize(context)
        manifest = require_manifest(context)
        extra = manifest.extra
        vocab = str(extra.get("vocab", "vocab.txt"))
        if vocab not in manifest.files:
            raise ArtifactRejected(f"vocabulary {vocab!r} is not listed in files", reason=Reason.FILE_MISSING,
                                   file=vocab)
        self.tokenizer = WordPieceTokenizer.from_file(context.model_dir / vocab,
                                                      lowercase=bool(extra.get("lowercase", True)),
                                                      max_len=int(extra.get("max_len", 128)))
        self.input_name = manifest.inputs[0].name
        self.classifier = Classifier(labels=manifest.labels, top_k=int(extra.get("top_k", 5)),
                                     apply_softmax=bool(extra.get("apply_softmax", True)),
                                     output_name=manifest.outputs[0].name)
        self.runner = ModelRunner.for_context(load_model(manifest, context.model_dir), context, compile_mode="none")

    def _texts(self, request: InferenceRequest) -> tuple[list[str], bool]:
        if self.input_name in request.inputs:
            return [_text(item) for item in request.inputs[self.input_name].ravel()], False
        if isinstance(request.json_body, dict) and isinstance(request.json_body.get("text"), str):
            return [request.json_body["text"]], True
        if request.raw is not None:
            return [_text(request.raw)], True
        raise bad_request("missing_input", f"send text, {{'text': ...}} or a BYTES input {self.input_name!r}",
                          inputs=[self.input_name])

    def _pad(self, encoded: list[list[int]]) -> torch.Tensor:
        ids = np.full((len(encoded), max(len(e) for e in encoded)), self.tokenizer.pad_id, dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, :len(tokens)] = tokens
        return torch.from_numpy(ids)

    def preprocess(self, batch: Sequence[InferenceRequest]) -> ClassifierBatch:
        """Token ids for every text of every request, padded to one tensor."""
        encoded: list[list[int]] = []
        sizes = []
        unwrap = []
        for request in batch:
            texts, single = self._texts(request)
            encoded.extend(self.tokenizer.encode(text) or [self.tokenizer.unk_id] for text in texts)
            sizes.append(len(texts))
            unwrap.append(single)
        return ClassifierBatch(self._pad(encoded), sizes, unwrap)

    def warmup(self) -> None:
        """A forward pass on one short text."""
        self.runner.warm(lambda n: (self._pad([self.tokenizer.encode("warm up")] * n),))
