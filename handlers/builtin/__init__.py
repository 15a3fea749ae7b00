"""The built-in handlers, by the name a manifest's ``handler`` field uses."""

from __future__ import annotations

from collections.abc import Mapping

from handlers.base import Handler
from handlers.builtin.image import ImageClassifierHandler
from handlers.builtin.tabular import TabularHandler
from handlers.builtin.text import TextClassifierHandler

BUILTIN_HANDLERS: Mapping[str, type[Handler]] = {
    "tabular": TabularHandler,
    "image_classifier": ImageClassifierHandler,
    "text_classifier": TextClassifierHandler,
}
