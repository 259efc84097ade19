"""Stop-and-resume scaffolding of the tests whose fits have a stage that samples answers (GRPO, Preference): the
same two-stage fit run whole, stopped mid-stage by a checkpointing run, and resumed from its `last.ckpt`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from emoverse import AMTDataModule, EmoVerseModule, Stage
from emoverse.checkpointing import ResumableCheckpoint
from emoverse.curriculum import Curriculum, MultiStageCurriculum

BATCH = 2


class Stop(Exception):
    """Raised to interrupt a run, as a crash or a pre-empted job would."""


class Recorder(pl.Callback):
    """The (record, task) draws and the callback metrics of every training batch; raises `Stop` before step
    `stop_at + 1`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.metrics: list[dict[str, float]] = []
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.stop_at:
            raise Stop
        self.pairs.extend(batch.draws)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(amt: Path, root: Path, recorder: Recorder, stages: Callable[[], list[Stage]],
        prepare: Callable[[EmoVerseModule], None] | None = None, ckpt_path: str | None = None,
        every: int = 0) -> EmoVerseModule:
    """One fit of `stages()` on the tiny backbone (`prepare` adjusts the module first), checkpointing every `every`
    steps into `root`."""
    torch.manual_seed(0)
    curriculum = Curriculum(stages())
    module = EmoVerseModule("tiny", lora_dropout=0.1, lr=1e-3, warmup_ratio=0.2, curriculum=curriculum)
    if prepare is not None:
        prepare(module)
    data = AMTDataModule(str(amt), batch_size=BATCH, eval_batch_size=BATCH, num_frames=2, seed=0,
                         processor=module.processor, tasks=module.tasks, curriculum=curriculum)
    trainer = pl.Trainer(
        max_epochs=curriculum.total_epochs, reload_dataloaders_every_n_epochs=1, strategy=SingleDeviceStrategy("cpu"),
        callbacks=[MultiStageCurriculum(curriculum), recorder,
                   ResumableCheckpoint(str(root), every_n_train_steps=every, keep_epoch_ends=False, handle_signals=False)],
        logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, default_root_dir=root,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def check_exact_resume(amt: Path, tmp_path: Path, stages: Callable[[], list[Stage]], stop: int, keys: tuple[str, ...],
                       prepare: Callable[[EmoVerseModule], None] | None = None) -> list[dict[str, float]]:
    """Run the fit whole, then stopped before step `stop + 1` and resumed: the resumed run draws the rest of the
    uninterrupted run's examples, logs the same `keys` at each step and ends with the same trainable weights.

    Returns:
        The uninterrupted run's metrics of each step (for the caller's own checks).
    """
    full = Recorder()
    reference = fit(amt, tmp_path / "full", full, stages, prepare)
    interrupted = Recorder(stop_at=stop)
    with pytest.raises(Stop):
        fit(amt, tmp_path / "stopped", interrupted, stages, prepare, every=1)
    rest = Recorder()
    resumed = fit(amt, tmp_path / "resumed", rest, stages, prepare, ckpt_path=str(tmp_path / "stopped" / "last.ckpt"))
    assert rest.pairs == full.pairs[stop * BATCH:]
    assert [[m[k] for k in keys] for m in rest.metrics] == [[m[k] for k in keys] for m in full.metrics[stop:]]
    want, got = reference.trainable_state_dict(), resumed.trainable_state_dict()
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)
    assert len(full.pairs) == len(full.metrics) * BATCH
    return full.metrics
