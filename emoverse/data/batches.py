"""Typed examples and batches: what the datasets yield, the collators make and the objectives, evaluation
and backbones read.

An `Example` is one prompt with its answer, its media and its record (`make_example`), read by attribute
like the batches. A batch's kind is its type, never found by probing keys: a supervised `TrainBatch`
(prompt + answer, labels at the answer), a `GenerationBatch` (left-padded prompts with the records the
task parsers and gold targets need) and a `GroupBatch` (a generation batch with each prompt repeated
`group_size` times in a row, for objectives that sample several answers per prompt). Each has `to(device)`, which
Lightning calls to move a batch (any object with a `to` method), so only the model inputs move.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from emoverse.data.record import AMTRecord

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


def _moved(inputs: dict[str, Any], device: torch.device | str, non_blocking: bool) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in inputs.items()}


@dataclass
class Example:
    """One training/evaluation example, as `make_example` builds it and the collators batch it.

    Attributes:
        id: its record's id.
        task: its task's name.
        query: the prompt text (the task's instruction, the shown dialogue turns and the answer format).
        response: the gold answer to the prompt as shown ("" for unlabelled input).
        images: the frames the prompt shows (empty for a task without "frames" or "video").
        audio: the record's 16 kHz waveform for a task that hears it, else None.
        as_video: whether `images` are shown as one video rather than as separate images.
        record: the record without its decoded media (what the task parsers and gold targets read); None
            for a hand-made example that no parser reads.
        truncated: whether the oldest dialogue turns were dropped for the prompt to fit the context.
    """

    id: str
    task: str
    query: str
    response: str
    images: list[Image.Image]
    audio: np.ndarray | None = None
    as_video: bool = False
    record: AMTRecord | None = None
    truncated: bool = False


@dataclass
class TrainBatch:
    """A supervised batch: `[prompt; answer]` rows, labels masked to the answer.

    Attributes:
        inputs: the backbone processor's model inputs (right-padded, or one packed row).
        labels: `[B, T]` answer token ids, `IGNORE_INDEX` elsewhere.
        tasks: per example, its task name.
        ids: per example, its record id.
        num_truncated: examples whose dialogue context was shortened to fit the context.
        packed_lengths: tokens per example when the rows are packed into one (`BackboneProcessor.pack`),
            else None.
    """

    inputs: dict[str, Any]
    labels: torch.Tensor
    tasks: list[str]
    ids: list[str]
    num_truncated: int = 0
    packed_lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def draws(self) -> list[tuple[str, str]]:
        """(record id, task) of each curriculum draw the batch holds, in order."""
        return list(zip(self.ids, self.tasks))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        """The batch with its tensors on `device`."""
        lengths = self.packed_lengths
        return dataclasses.replace(self, inputs=_moved(self.inputs, device, non_blocking),
                                   labels=self.labels.to(device, non_blocking=non_blocking),
                                   packed_lengths=None if lengths is None else lengths.to(device))


@dataclass
class GenerationBatch:
    """Left-padded prompts to answer, with what the task parsers and the gold targets read.

    Attributes:
        inputs: the backbone processor's model inputs (left-padded, ending with the assistant header).
        tasks: per row, its task name.
        ids: per row, its record id.
        queries: per row, the prompt text.
        records: per row, the record without its decoded media.
        num_truncated: rows whose dialogue context was shortened to fit the context.
        responses: per row, the gold answer to the prompt as shown (after any context truncation; "" for
            unlabelled input), e.g. the chosen answer of a preference pair.
    """

    inputs: dict[str, Any]
    tasks: list[str]
    ids: list[str]
    queries: list[str]
    records: list[AMTRecord]
    num_truncated: int = 0
    responses: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def draws(self) -> list[tuple[str, str]]:
        """(record id, task) of each draw the batch holds, in order."""
        return list(zip(self.ids, self.tasks))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GenerationBatch:
        """The batch with its model inputs on `device` (records stay as they are)."""
        return dataclasses.replace(self, inputs=_moved(self.inputs, device, non_blocking))


@dataclass
class GroupBatch(GenerationBatch):
    """A `GenerationBatch` whose prompts come in groups: each prompt `group_size` times in a row, so one
    batched generation samples every prompt's group of answers.

    Attributes:
        group_size: G, the rows per prompt.
        once: the model inputs of each distinct prompt once (left-padded, each medium once), from which
            shared-prompt rows score a group's answers (`objectives.shared_rows`); None: only the repeated rows.
    """

    group_size: int = field(default=2, kw_only=True)
    once: dict[str, Any] | None = field(default=None, kw_only=True)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GroupBatch:
        """The batch with its model inputs (both layouts) on `device`."""
        once = None if self.once is None else _moved(self.once, device, non_blocking)
        return dataclasses.replace(self, inputs=_moved(self.inputs, device, non_blocking), once=once)

    @property
    def prompts(self) -> int:
        """The number of distinct prompts (groups)."""
        return len(self.tasks) // self.group_size

    @property
    def draws(self) -> list[tuple[str, str]]:
        """(record id, task) of each draw: one per group (its rows repeat one prompt)."""
        return list(zip(self.ids[::self.group_size], self.tasks[::self.group_size]))


Batch = TrainBatch | GenerationBatch
"""Any batch a collator makes (a `GroupBatch` is a `GenerationBatch`)."""
