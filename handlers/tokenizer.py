"""A WordPiece tokenizer read from a ``vocab.txt`` shipped inside the artifact: nothing is downloaded.

Text is lower-cased (unless told not to), split on whitespace and punctuation, and each word is cut greedily
into the longest vocabulary pieces (``##`` marks a continuation), the way BERT's vocabularies expect.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from schemas.errors import ArtifactRejected, Reason

MAX_WORD_CHARS = 100


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P") or (char.isascii() and not char.isalnum()
                                                          and not char.isspace())


def basic_split(text: str, *, lowercase: bool) -> list[str]:
    """Words and single punctuation marks, in order."""
    if lowercase:
        text = text.lower()
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for char in chunk:
            if _is_punctuation(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


class WordPieceTokenizer:
    """Maps text to token ids with ``[CLS]``/``[SEP]`` around it when the vocabulary has them."""

    def __init__(self, vocab: list[str], *, lowercase: bool = True, max_len: int = 128):
        self.ids = {token: index for index, token in enumerate(vocab)}
        self.lowercase = lowercase
        self.max_len = max_len
        self.pad_id = self.ids.get("[PAD]", 0)
        self.unk_id = self.ids.get("[UNK]", self.pad_id)
        self.cls_id = self.ids.get("[CLS]")
        self.sep_id = self.ids.get("[SEP]")

    @classmethod
    def from_file(cls, path: Path, *, lowercase: bool = True, max_len: int = 128) -> WordPieceTokenizer:
        """Read one token per line."""
        try:
            vocab = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ArtifactRejected(f"vocabulary {path.name} cannot be read: {e}", reason=Reason.FILE_MISSING,
                                   file=path.name) from e
        return cls([line.strip() for line in vocab], lowercase=lowercase, max_len=max_len)

    def _pieces(self, word: str) -> list[int]:
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        pieces: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids, truncated to ``max_len`` including the special tokens."""
        ids = [piece for word in basic_split(text, lowercase=self.lowercase) for piece in self._pieces(word)]
        specials = (self.cls_id is not None) + (self.sep_id is not None)
        ids = ids[:max(self.max_len - specials, 0)]
        if self.cls_id is not None:
            ids.insert(0, self.cls_id)
        if self.sep_id is not None:
            ids.append(self.sep_id)
        return ids
