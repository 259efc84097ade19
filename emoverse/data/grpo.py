"""`GroupCollator`: the training batches of a reinforcement (GRPO) stage: prompts with their records, each G times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emoverse.backbones.base import BackboneProcessor
from emoverse.data.collator import AMTCollator


class GroupCollator:
    """A generation batch (`AMTCollator` mode "generate": left-padded prompts, `queries`, `records`)
    with every example repeated `group_size` times in a row, so one batched generation samples each
    prompt's group of answers, and `group_size` in the batch.

    The train loader of a GRPO stage uses it in place of the supervised collator; it draws the same
    (record, task) pairs from the curriculum, so its state (draws delivered) is the position as for
    any stage. Each copy is encoded, so any backbone's multimodal inputs (pixel values laid out per
    frame, grid sizes) repeat correctly.

    Args:
        processor: the backbone's processor.
        group_size: G, answers sampled per prompt.
        system_prompt: optional system message.
    """

    def __init__(self, processor: BackboneProcessor, group_size: int, system_prompt: str | None = None) -> None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"GroupCollator: group_size={group_size!r}; expected an int >= 2")
        self.group_size = group_size
        self.inner = AMTCollator(processor, "generate", system_prompt)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner([ex for ex in examples for _ in range(self.group_size)])
        batch["group_size"] = self.group_size
        return batch
