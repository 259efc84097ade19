"""Batching: examples → the backbone processor's model inputs, annotated with which record and task each row is.

The backbone's processor owns the chat template, the image placeholders and the visual token
counts (`emoverse.backbones.BackboneProcessor`) and encodes only; this picklable collator, which a
`DataLoader` calls in its worker processes, adds the batch's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from emoverse.backbones.base import IGNORE_INDEX, BackboneProcessor, PromptTooLong
from emoverse.data.batches import Example, GenerationBatch, TrainBatch

__all__ = ["IGNORE_INDEX", "AMTCollator"]


class AMTCollator:
    """Turn examples (`Example`, from `make_example`) into a typed batch (`emoverse.data.batches`).

    Mode "train" makes a `TrainBatch` (`inputs` and `labels`, per row `tasks` and `ids`, `num_truncated`:
    rows whose dialogue context was shortened to fit; `packed_lengths` when packed); mode "generate" a
    `GenerationBatch`, which also holds the rows' `queries` and `records` (frame-less, for the task
    parsers and the gold targets).

    Args:
        processor: the backbone's processor.
        mode: "train" appends the response and masks everything else in `labels` (right padding);
            "generate" stops after the assistant header (left padding, for batched generation).
        system_prompt: optional system message.
        pack: "train" only: concatenate the rows into one padding-free row (`BackboneProcessor.pack`:
            per-example position ids, so no attention crosses examples; `packed_lengths` per example).
    """

    def __init__(self, processor: BackboneProcessor, mode: Literal["train", "generate"] = "train",
                 system_prompt: str | None = None, pack: bool = False) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"AMTCollator: mode={mode!r}; expected 'train' or 'generate'")
        if pack and mode != "train":
            raise ValueError("AMTCollator: pack=True applies to mode='train' only (generation is left-padded)")
        self.processor, self.mode, self.system_prompt, self.pack = processor, mode, system_prompt, pack

    def __call__(self, examples: Sequence[Example]) -> TrainBatch | GenerationBatch:
        train = self.mode == "train"
        try:
            encoded = self.processor([ex.query for ex in examples], [ex.images for ex in examples],
                                   [ex.response for ex in examples] if train else None, self.system_prompt,
                                   **batch_media(examples))
        except PromptTooLong as err:
            ex = examples[err.row]
            raise ValueError(f"record {ex.id} ({ex.task}): {err.tokens} tokens exceed the context of "
                             f"{err.max_length}; shorten its query (make_example drops the oldest context turns)"
                             ) from None
        tasks, ids = [ex.task for ex in examples], [ex.id for ex in examples]
        truncated = sum(ex.truncated for ex in examples)
        if not train:
            return GenerationBatch(encoded["inputs"], tasks, ids, [ex.query for ex in examples],
                                   [ex.record for ex in examples], truncated, [ex.response for ex in examples])
        if not self.pack:
            return TrainBatch(encoded["inputs"], encoded["labels"], tasks, ids, truncated)
        packed = self.processor.pack(encoded)
        return TrainBatch(packed["inputs"], packed["labels"], tasks, ids, truncated, packed["packed_lengths"])


def batch_media(examples: Sequence[Example]) -> dict[str, Any]:
    """The processor's media arguments for a batch (`audios`, `as_video`, per row), only those some row shows,
    so a processor without audio or video support is called exactly as for image-only examples."""
    out: dict[str, Any] = {}
    if any(ex.audio is not None for ex in examples):
        out["audios"] = [ex.audio for ex in examples]
    if any(ex.as_video for ex in examples):
        out["as_video"] = [ex.as_video for ex in examples]
    return out
