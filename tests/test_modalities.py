"""What each prompt shows: a task's media (frames, video, audio), the modalities a run drops, and what the
collator hands the processor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from emoverse import AMTDataModule
from emoverse.backbones import create_backbone
from emoverse.data.collator import AMTCollator
from emoverse.data.dataset import TEXT_WITHHELD, make_example
from emoverse.data.record import AMTLabels, AMTRecord, Utterance
from emoverse.tasks import get_task


def record(audio: np.ndarray | None = None) -> AMTRecord:
    return AMTRecord(id="r0", source="meld", split="train", text="I got the job!", speaker="Ann", dialogue_id="d0",
                     turn=2, labels=AMTLabels(emotion="joy", sentiment=2.0, cause_pairs=[(2, 1, "joy")]),
                     context=[Utterance(turn=1, speaker="Bob", text="You start on Monday.", emotion="neutral")],
                     frames=[Image.new("RGB", (32, 32), (k * 40, 0, 0)) for k in range(6)], audio=audio)


class Recorder:
    """A processor stand-in that records the media arguments each call gets."""

    max_length = 4096
    end_ids = [0]

    def __init__(self) -> None:
        self.prompt_calls: list[dict[str, Any]] = []
        self.batch_calls: list[dict[str, Any]] = []

    def tokenize(self, text: str) -> list[int]:
        return [1] * len(text.split())

    def prompt_length(self, query: str, images: list, system_prompt: str | None = None, **media: Any) -> int:
        self.prompt_calls.append(media)
        return len(self.tokenize(query)) + len(images)

    def __call__(self, queries, images, responses=None, system_prompt=None, **media: Any) -> dict[str, Any]:
        self.batch_calls.append(media)
        return {"inputs": {}, "labels": None}


WAVE = np.sin(np.linspace(0, 200, 16_000)).astype(np.float32)


def test_a_task_shows_the_media_it_names() -> None:
    proc = Recorder()
    frames = make_example(record(WAVE), get_task("mer"), proc, num_frames=4, seed=0)
    assert len(frames.images) == 4 and frames.audio is None and not frames.as_video
    both = make_example(record(WAVE), get_task("mer", media=["frames", "audio"]), proc, num_frames=4, seed=0)
    assert len(both.images) == 4 and np.array_equal(both.audio, WAVE)
    assert proc.prompt_calls[-1].keys() == {"audio"}  # the prompt is measured with its audio tokens
    video = make_example(record(), get_task("mer", media=["video"]), proc, num_frames=4, seed=0)
    assert len(video.images) == 4 and video.as_video and proc.prompt_calls[-1] == {"as_video": True}
    sound = make_example(record(WAVE), get_task("mer", media=["audio"]), proc, num_frames=4, seed=0)
    assert sound.images == [] and sound.audio is not None
    silent = make_example(record(None), get_task("mer", media=["audio"]), proc, num_frames=4, seed=0)
    assert silent.audio is None  # a record without audio: shown without it
    assert both.record.frames == [] and both.record.audio is None  # media stay out of the parsers' record


def test_dropped_modalities_leave_every_prompt() -> None:
    proc, task = Recorder(), get_task("ecpe", media=["frames", "audio"])
    full = make_example(record(WAVE), task, proc, num_frames=4, seed=0)
    bare = make_example(record(WAVE), task, proc, num_frames=4, seed=0, drop=frozenset({"frames", "audio", "text"}))
    assert bare.images == [] and bare.audio is None
    assert "I got the job!" in full.query and "You start on Monday." in full.query
    assert "I got the job!" not in bare.query and "You start on Monday." not in bare.query
    assert bare.query.count(TEXT_WITHHELD) >= 2  # every turn shown, the target and its context
    assert bare.response == full.response  # the answer is the same; only the prompt loses the text
    assert bare.record.text == "I got the job!"  # the gold side keeps it


def test_the_collator_passes_media_only_when_a_row_shows_them() -> None:
    proc = Recorder()
    plain = make_example(record(WAVE), get_task("msa"), proc, num_frames=2, seed=0)
    heard = make_example(record(WAVE), get_task("mer", media=["audio"]), proc, num_frames=2, seed=0)
    seen = make_example(record(), get_task("mer", media=["video"]), proc, num_frames=2, seed=0)
    collate = AMTCollator(proc, "train")  # type: ignore[arg-type]
    collate([plain, plain])
    assert proc.batch_calls[-1] == {}  # an image-only batch calls the processor exactly as before audio existed
    collate([plain, heard, seen])
    media = proc.batch_calls[-1]
    assert media["as_video"] == [False, False, True]
    assert media["audios"][0] is None and media["audios"][2] is None and np.array_equal(media["audios"][1], WAVE)


def test_drop_modalities_is_checked_and_applies_to_every_split(demo_amt: Path) -> None:
    bb = create_backbone("tiny")
    tasks = {"msa": get_task("msa"), "mer": get_task("mer")}
    with pytest.raises(ValueError, match=r"drop_modalities=\['smell'\]; expected a list of names from"):
        AMTDataModule(str(demo_amt), processor=bb.processor, tasks=tasks, drop_modalities=["smell"])
    dm = AMTDataModule(str(demo_amt), processor=bb.processor, tasks=tasks, drop_modalities=["frames"], batch_size=4,
                       eval_batch_size=4)
    dm.setup("fit")
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    for batch in (train, val):
        assert "pixel_values" not in batch.inputs  # no frame in any row
    assert bb.loss(train)["loss"].isfinite()


def test_a_task_asking_for_media_the_backbone_cannot_take_fails_at_start() -> None:
    from emoverse import EmoVerseModule

    with pytest.raises(ValueError, match=r"task 'mer' shows \['audio'\], which backbone tiny cannot take .*"
                                         r"task_args: \{mer: \{media: \[\.\.\.\]\}\}"):
        EmoVerseModule("tiny", tasks=["msa", "mer"], task_args={"mer": {"media": ["frames", "audio"]}})
