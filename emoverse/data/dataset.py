"""`AMTDataset`: map-style access to (record, task) pairs, turned into prompt, response and frames."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from emoverse.backbones.base import Processor
from emoverse.data.record import AMTRecord
from emoverse.data.shards import ShardIndex

if TYPE_CHECKING:
    from emoverse.tasks.base import Task


def select_frames(record: AMTRecord, media: str, num_frames: int) -> list[Any]:
    """The frames a task shows: the peak frame ("peak"; the middle frame when none is marked)
    or up to `num_frames` frames sampled uniformly in time ("video")."""
    frames = record.frames
    if not frames:
        raise ValueError(f"record {record.id}: no frames, but the vision backbone needs at least one")
    if media == "peak":
        return [frames[record.peak_frame if record.peak_frame is not None else len(frames) // 2]]
    if len(frames) <= num_frames:
        return list(frames)
    step = len(frames) / num_frames
    return [frames[int(step * k + step / 2)] for k in range(num_frames)]


class AMTDataset(torch.utils.data.Dataset):
    """Indexed by `(record_index, task_name)`: builds the task's (query, response) and the frames.

    Args:
        index: the split's shard index.
        tasks: task objects by name.
        processor: the backbone's processor (image preprocessing).
        num_frames: frames per video prompt.
        seed: seeds each pair's prompt-variant choice, so a pair always reads the same.
    """

    def __init__(self, index: ShardIndex, tasks: Mapping[str, Task], processor: Processor,
                 num_frames: int = 4, seed: int = 0) -> None:
        self.index, self.tasks, self.processor = index, dict(tasks), processor
        self.num_frames, self.seed = num_frames, seed
        metas = [AMTRecord.from_metadata(e.meta, where=f"{index.paths[e.shard]} record {e.meta.get('id')}")
                 for e in index.entries]
        self.record_tasks: list[frozenset[str]] = [
            frozenset(name for name, task in self.tasks.items() if task.has_label(r)) for r in metas
        ]

    def __len__(self) -> int:
        return len(self.index)

    def pairs(self, tasks: list[str] | None = None) -> list[tuple[int, str]]:
        """Every labelled (record, task) pair, grouped by task (evaluation order)."""
        names = tasks or list(self.tasks)
        return [(i, t) for t in names for i, has in enumerate(self.record_tasks) if t in has]

    def __getitem__(self, key: tuple[int, str]) -> dict[str, Any]:
        i, name = key
        return make_example(self.index.record(i), self.tasks[name], self.processor, self.num_frames, self.seed)


def make_example(record: AMTRecord, task: Task, processor: Processor, num_frames: int, seed: int) -> dict[str, Any]:
    """One training/evaluation example: the task's (query, response), the frames it shows, the record."""
    query, response = task.build(record, random.Random(f"{seed}/{record.id}/{task.name}"))
    frames = select_frames(record, task.media, num_frames)
    pixel_values = processor.pixel_values(frames, where=f"record {record.id}")
    record.frames = []  # the batch carries labels and ids, not decoded images
    return {"id": record.id, "task": task.name, "query": query, "response": response,
            "pixel_values": pixel_values, "record": record}
