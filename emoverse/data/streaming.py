"""`AMTStream`: training examples streamed from AMT shards, one webdataset stream per task.

For AMT too large or too remote for random access. Shards are split across DDP ranks and
dataloader workers (webdataset's `split_by_node` / `split_by_worker`), each task's stream keeps
the records labelled for it, and `mix_streams` interleaves the streams by the task ratios.
An epoch ends when the first task stream runs out. A worker (or rank) given no shard yields
nothing, so give a split at least ranks × workers shards of similar size. Budgets, exact resume and multi-stage
curricula need the indexed reader (`ShardIndex` + `TaskWeightedSampler`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from emoverse.backbones.base import BackboneProcessor
from emoverse.curriculum.streams import mix_streams
from emoverse.data.dataset import check_drop, hears, make_example
from emoverse.data.shards import OnCorrupt, shard_paths, stream_records

if TYPE_CHECKING:
    from emoverse.data.batches import Example
    from emoverse.tasks.base import Task


class AMTStream(torch.utils.data.IterableDataset):
    """Examples of `split` drawn by `ratios` from per-task shard streams; reshuffled per epoch.

    Args:
        root: AMT root.
        split: shard folder to stream.
        tasks: task objects by name.
        ratios: task name -> positive weight.
        processor: the backbone's processor.
        num_frames: frames per video prompt.
        seed: seed of shard order, sample shuffling and the mix (combined with the epoch).
        shuffle: size of webdataset's sample shuffle buffer.
        on_corrupt: "error" or "skip" a bad record or unreadable shard (see `stream_records`).
        system_prompt: the system message the collator adds (prompts are shortened to fit the context with it).
        drop_modalities: modalities taken out of every prompt (`emoverse.data.dataset.MODALITIES`).
    """

    def __init__(self, root: str | Path, split: str, tasks: Mapping[str, Task], ratios: Mapping[str, float],
                 processor: BackboneProcessor, num_frames: int = 4, seed: int = 0, shuffle: int = 1000,
                 on_corrupt: OnCorrupt = "error", system_prompt: str | None = None,
                 drop_modalities: Sequence[str] = ()) -> None:
        unknown = set(ratios) - set(tasks)
        if unknown:
            raise ValueError(f"AMTStream: ratios name tasks {sorted(unknown)} the module does not have: {sorted(tasks)}")
        self.root, self.split = root, split
        self.num_shards = len(shard_paths(root, split))
        self.tasks, self.ratios, self.processor = dict(tasks), dict(ratios), processor
        self.num_frames, self.seed, self.shuffle, self.on_corrupt = num_frames, seed, shuffle, on_corrupt
        self.system_prompt = system_prompt
        self.drop = check_drop(drop_modalities, "AMTStream")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start: a fresh shard order, shuffle and mix."""
        self.epoch = epoch

    def _task_stream(self, name: str, seed: int, seen: list[int]) -> Iterator[Any]:
        task = self.tasks[name]
        for record in stream_records(self.root, self.split, shuffle=self.shuffle, seed=seed, on_corrupt=self.on_corrupt,
                                     with_audio=hears(task, self.drop)):
            seen[0] += 1
            if task.has_label(record):
                yield record

    def __iter__(self) -> Iterator[Example]:
        seed = self.seed * 100_003 + self.epoch
        ended: list[str] = []
        seen = [0]  # records this worker read, labelled or not

        def tracked(name: str, records: Iterator[Any]) -> Iterator[Any]:
            yield from records
            ended.append(name)

        streams = {name: tracked(name, self._task_stream(name, seed + k, seen))
                   for k, name in enumerate(sorted(self.ratios))}
        count = 0
        for record, name in mix_streams(streams, self.ratios, seed=seed):
            count += 1
            yield make_example(record, self.tasks[name], self.processor, self.num_frames, self.seed, self.system_prompt,
                               drop=self.drop)
        if count == 0 and seen[0]:  # a worker given no shard yields nothing, as webdataset does
            raise RuntimeError(
                f"AMTStream: the {ended[0]!r} stream of {self.root}/{self.split} ({self.num_shards} shards) has no "
                "labelled record for this worker; every task in the ratios needs labelled records in every shard set"
            )
