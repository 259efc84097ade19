"""`AMTDataset`: map-style access to (record, task) pairs, turned into prompt, response and frames."""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from emoverse.backbones.base import BackboneProcessor
from emoverse.data.audio import decode_audio
from emoverse.data.batches import Example
from emoverse.data.record import AMTRecord
from emoverse.data.shards import ShardIndex

if TYPE_CHECKING:
    from emoverse.tasks.base import FrameChoice, Task


_CONVERTIBLE_MODES = ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr")


def rgb_frames(images: Sequence[Any], where: str = "") -> list[Image.Image]:
    """Frames as RGB PIL images. Modes PIL converts losslessly to RGB (RGBA, L, P, CMYK, ...) are
    converted; others (16-bit, float) are rejected, naming `where` (the record)."""
    out = []
    for k, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise TypeError(f"{where} frame {k}: expected a PIL image, got {type(img).__name__}")
        if img.mode != "RGB":
            if img.mode not in _CONVERTIBLE_MODES:
                raise ValueError(f"{where} frame {k}: image mode {img.mode!r} cannot become RGB; "
                                 f"expected one of {_CONVERTIBLE_MODES}")
            img = img.convert("RGB")
        out.append(img)
    return out


def select_frames(record: AMTRecord, media: FrameChoice, num_frames: int) -> list[Any]:
    """The frames a task shows (`Task.frames`): the peak frame ("peak"; the middle frame when none is marked)
    or up to `num_frames` frames sampled uniformly in time ("clip")."""
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
        processor: the backbone's processor (measures prompts so long dialogues can be shortened).
        num_frames: frames per video prompt.
        seed: seeds each pair's prompt-variant choice, so a pair always reads the same.
        system_prompt: the system message the collator adds (it counts towards the context).
        drop_modalities: modalities taken out of every prompt (`MODALITIES`: "frames", "audio", "text").
    """

    def __init__(self, index: ShardIndex, tasks: Mapping[str, Task], processor: BackboneProcessor,
                 num_frames: int = 4, seed: int = 0, system_prompt: str | None = None,
                 drop_modalities: Sequence[str] = ()) -> None:
        self.index, self.tasks, self.processor = index, dict(tasks), processor
        self.num_frames, self.seed, self.system_prompt = num_frames, seed, system_prompt
        self.drop = check_drop(drop_modalities, "AMTDataset")
        self._frame_sizes: dict[int, list[tuple[int, int]]] = {}
        metas = [AMTRecord.from_metadata(e.meta, where=f"{index.paths[e.shard]} record {e.meta.get('id')}")
                 for e in index.entries]
        # the task names of each record's labels, plus a `source:<name>` tag for stages restricted to sources
        self.record_tasks: list[frozenset[str]] = [
            frozenset([*(name for name, task in self.tasks.items() if task.has_label(r)), f"source:{r.source}"])
            for r in metas
        ]

    def __len__(self) -> int:
        return len(self.index)

    def pairs(self, tasks: list[str] | None = None) -> list[tuple[int, str]]:
        """Every labelled (record, task) pair, grouped by task (evaluation order)."""
        names = tasks or list(self.tasks)
        return [(i, t) for t in names for i, has in enumerate(self.record_tasks) if t in has]

    def __getitem__(self, key: tuple[int, str]) -> Example:
        i, name = key
        record = self.index.record(i, with_audio=self.hears(name))
        return make_example(record, self.tasks[name], self.processor, self.num_frames, self.seed,
                            self.system_prompt, drop=self.drop)

    def hears(self, task: str) -> bool:
        """Whether `task`'s prompts carry the audio (`hears`): only then is a record's audio decoded."""
        return hears(self.tasks[task], self.drop)

    def example_length(self, i: int, task: str) -> int:
        """Tokens of the training row of (record `i`, `task`) as the collator encodes it: the prompt with its
        visual tokens (`BackboneProcessor.prompt_length`), the response and the end-of-turn tokens.

        Built like `__getitem__` (same prompt variant, same context shortening) from the record's metadata
        and its frames' sizes, read from the image headers: no frame is decoded (the audio is, for a task
        that hears it: its token count follows its length).
        """
        record = self.index.record(i, with_frames=False, with_audio=self.hears(task))  # audio tokens follow its length
        sizes = self._frame_sizes.get(i)
        if sizes is None:  # once per record: its tasks show the same frames
            sizes = self._frame_sizes[i] = self.index.frame_sizes(i)
        frames = [_blank_frame(size) for size in sizes]
        record = dataclasses.replace(record, frames=frames)
        ex = make_example(record, self.tasks[task], self.processor, self.num_frames, self.seed, self.system_prompt,
                          drop=self.drop)
        return (self.processor.prompt_length(ex.query, ex.images, self.system_prompt, **prompt_media(ex))
                + len(self.processor.tokenize(ex.response)) + len(self.processor.end_ids))


@functools.lru_cache(maxsize=64)
def _blank_frame(size: tuple[int, int]) -> Image.Image:
    """A stand-in frame of this size: prompt lengths depend on frame sizes, never on pixels."""
    return Image.new("RGB", size)


class BatchedPairs(torch.utils.data.Dataset):
    """An `AMTDataset` indexed by a whole batch of (record, task) pairs (a loader with `batch_size=None`
    over a `TokenBudgetSampler`): item `[(i, task), ...]` is the list of their examples."""

    def __init__(self, dataset: AMTDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, keys: list[tuple[int, str]]) -> list[dict[str, Any]]:  # type: ignore[override]
        return [self.dataset[key] for key in keys]


MODALITIES: tuple[str, ...] = ("frames", "audio", "text")
"""What `drop` (`AMTDataModule(drop_modalities=...)`) can take out of every prompt: the frames (as images or
video), the audio track, the transcript (the utterance and its dialogue turns' text)."""


def hears(task: Task, drop: frozenset[str]) -> bool:
    """Whether `task`'s prompts carry the audio: its media name it and the run does not drop it."""
    return "audio" in task.media and "audio" not in drop


def check_drop(drop: Sequence[str], owner: str) -> frozenset[str]:
    """Validate a list of modalities to drop (`MODALITIES`)."""
    if isinstance(drop, str) or not all(m in MODALITIES for m in drop):
        raise ValueError(f"{owner}: drop_modalities={drop!r}; expected a list of names from {MODALITIES}")
    return frozenset(drop)


def make_example(record: AMTRecord, task: Task, processor: BackboneProcessor, num_frames: int, seed: int,
                 system_prompt: str | None = None, label: bool = True, drop: frozenset[str] = frozenset()
                 ) -> Example:
    """One training/evaluation example (`Example`): the task's (query, response), the media it shows (`task.media`,
    less the modalities in `drop`), and the record without its decoded media (what parsers and targets
    read). `record` itself is not changed.

    The example's `images` are the task's frames (empty without "frames" or "video"), `as_video` says
    to show them as one video, `audio` is the record's waveform (`emoverse.data.audio`) for a task with
    "audio", or None (not asked, dropped, or the record has none: the AMT manifest counts why). With
    "text" in `drop` the query shows `TEXT_WITHHELD` in place of the transcript and of every dialogue turn.

    A prompt that does not fit the context loses its oldest dialogue turns, one at a time, until it
    fits (the task's instruction and answer format always stay); `truncated` says so. With
    `label=False` (answering unlabelled input) the response is empty.
    """
    where = f"record {record.id}"
    shows = set(task.media) - ({"frames", "video"} if "frames" in drop else set()) - (drop & {"audio"})
    images = rgb_frames(select_frames(record, task.frames, num_frames), where) if shows & {"frames", "video"} else []
    audio = decode_audio(record.audio, where) if "audio" in shows and record.audio is not None else None
    media = _media(audio, "video" in shows)
    seed_text = f"{seed}/{record.id}/{task.name}"

    def pose(context: list[Any]) -> tuple[str, str]:  # (query, response) showing these dialogue turns
        kept = dataclasses.replace(record, context=context)
        if not label:
            return task.query(_without_text(kept) if "text" in drop else kept, random.Random(seed_text)), ""
        query, response = task.build(kept, random.Random(seed_text))  # the answer names only turns the prompt shows
        if "text" in drop:  # the same prompt variant (the same seed), the transcript withheld; the answer stays
            query = task.query(_without_text(kept), random.Random(seed_text))
        return query, response

    if label:
        task.check_label(record)
    context, truncated = list(record.context), False
    query, response = pose(context)
    room = processor.max_length - len(processor.tokenize(response)) - len(processor.end_ids)
    while processor.prompt_length(query, images, system_prompt, **media) > room:
        if not context:
            raise ValueError(f"record {record.id} ({task.name}): the prompt does not fit the context of "
                             f"{processor.max_length} tokens even without dialogue context; use fewer frames "
                             "or a backbone with a longer context")
        context, truncated = context[1:], True
        query, response = pose(context)
    return Example(id=record.id, task=task.name, query=query, response=response, images=images, audio=audio,
                   as_video="video" in shows, record=dataclasses.replace(record, frames=[], audio=None),
                   truncated=truncated)


def prompt_media(example: Example) -> dict[str, Any]:
    """The media arguments of `BackboneProcessor.prompt_length` for an example: only those it shows, so a
    processor without audio or video support is called exactly as for an image-only example."""
    return _media(example.audio, example.as_video)


def _media(audio: Any, as_video: bool) -> dict[str, Any]:
    return {**({"audio": audio} if audio is not None else {}), **({"as_video": True} if as_video else {})}


TEXT_WITHHELD = "(transcript withheld)"
"""What the prompt shows in place of each utterance's text when the "text" modality is dropped."""


def _without_text(record: AMTRecord) -> AMTRecord:
    """`record` with its transcript and its dialogue turns' texts withheld (the "text" modality dropped)."""
    return dataclasses.replace(record, text=TEXT_WITHHELD,
                               context=[dataclasses.replace(u, text=TEXT_WITHHELD) for u in record.context])
