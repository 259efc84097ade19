"""Batching: examples → the backbone processor's model inputs, with response-only labels.

The backbone's processor owns the chat template, the image placeholders and the visual token
counts (`emoverse.backbones.BackboneProcessor`); this picklable wrapper fixes the mode and the
system prompt so a `DataLoader` can call it in worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from emoverse.backbones.base import IGNORE_INDEX, BackboneProcessor

__all__ = ["IGNORE_INDEX", "AMTCollator"]


class AMTCollator:
    """Turn examples `{id, task, query, response, images, record}` into a model batch.

    Args:
        processor: the backbone's processor.
        mode: "train" appends the response and masks everything else in `labels` (right padding);
            "generate" stops after the assistant header (left padding, for batched generation).
        system_prompt: optional system message.
    """

    def __init__(self, processor: BackboneProcessor, mode: Literal["train", "generate"] = "train",
                 system_prompt: str | None = None) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"AMTCollator: mode={mode!r}; expected 'train' or 'generate'")
        self.processor, self.mode, self.system_prompt = processor, mode, system_prompt

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.processor(examples, self.mode, self.system_prompt)
