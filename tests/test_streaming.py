"""Streaming AMT: per-task webdataset streams mixed by ratio, split across dataloader workers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest

from emoverse import AMTDataModule, EmoVerseModule, make_demo_amt
from emoverse.curriculum import Curriculum, Stage
from emoverse.data.streaming import AMTStream


@pytest.fixture(scope="module")
def small_amt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream_amt")
    make_demo_amt(root, seed=1, num_monologues=120, num_dialogues=30)
    return root


def test_stream_mixes_tasks_by_ratio_and_reshuffles_per_epoch(small_amt: Path, tiny_module: EmoVerseModule) -> None:
    stream = AMTStream(small_amt, "train", tiny_module.tasks, {"msa": 3, "fer": 1}, tiny_module.backbone.processor,
                       num_frames=2, shuffle=50)
    first = [(ex.id, ex.task) for ex in stream]
    counts = Counter(task for _, task in first)
    assert set(counts) == {"msa", "fer"}
    assert counts["msa"] / len(first) == pytest.approx(0.75, abs=0.02)
    assert [(ex.id, ex.task) for ex in stream] == first  # same epoch, same sequence
    stream.set_epoch(1)
    assert [(ex.id, ex.task) for ex in stream] != first


def test_streaming_datamodule_trains_with_workers(small_amt: Path, tmp_path: Path) -> None:
    module = EmoVerseModule("tiny", lr=1e-3, tasks=["msa", "mer"])
    data = AMTDataModule(str(small_amt), batch_size=4, num_workers=2, streaming=True,
                         stream_ratios={"msa": 1, "mer": 1}, processor=module.processor, tasks=module.tasks)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert trainer.global_step == 3
    with pytest.raises(ValueError, match="streaming=True\\) cannot follow a curriculum"):
        AMTDataModule(str(small_amt), streaming=True, curriculum=Curriculum([Stage(name="s", ratios={"msa": 1})]))


def test_stream_without_max_steps_is_an_error(small_amt: Path, tmp_path: Path) -> None:
    module = EmoVerseModule("tiny", tasks=["msa"])
    data = AMTDataModule(str(small_amt), batch_size=4, streaming=True, processor=module.processor,
                         tasks=module.tasks)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="set Trainer\\(max_steps=...\\)"):
        trainer.fit(module, data)
