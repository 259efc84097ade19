"""Acceptance test of the M2SE curriculum: a run stopped and resumed equals an uninterrupted run.

Real `EmoVerseModule` (tiny backbone, LoRA dropout 0.1, so the forward pass draws random numbers)
and `AMTDataModule` on a small demo AMT; the stages are the M2SE mixes scaled down to a few steps,
and stage 2 also trains the vision encoder at its own lr, so a resume in stage 2 needs other
parameters trainable than the optimizer was configured with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from emoverse import AMTDataModule, EmoVerseModule, MultiStageCurriculum, Stage
from emoverse.checkpointing import ResumableCheckpoint
from emoverse.curriculum import Curriculum
from emoverse.data import make_demo_amt

BATCH = 4


def m2se_small(first: int, second: int) -> list[Stage]:
    """M2SE's mixes on a small pool: 1 epoch of `first` batches, then 2 epochs of `second` batches."""
    return [
        Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=24, epochs=1, samples_per_epoch=first * BATCH),
        Stage(name="reasoning", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, epochs=2, samples_per_epoch=second * BATCH,
              train=["projector", "lora", "vision"], lr=5e-4),
    ]


class RestoreAfterSetup(SingleDeviceStrategy):
    """One CPU device, restoring checkpoints as FSDP, ModelParallel and DeepSpeed do: callback state
    is loaded only after `on_fit_start` (`restore_checkpoint_after_setup`)."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


class Stop(Exception):
    """Raised to interrupt a run, as a crash or a pre-empted job would."""


class Recorder(pl.Callback):
    """Records the (record id, task) pairs of every training batch; raises `Stop` before step `stop_at + 1`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.stop_at = stop_at

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [p for batch in self.batches for p in batch]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.stop_at:
            raise Stop(f"stopped after step {self.stop_at}")
        self.batches.append(list(zip(batch.ids, batch.tasks)))


@pytest.fixture(scope="module")
def small_amt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small_amt")
    make_demo_amt(path, seed=0, num_monologues=40, num_dialogues=10, num_frames=2)
    return path


def fit(amt: Path, root: Path, stages: list[Stage], recorder: Recorder, ckpt_path: str | None = None,
        every: int | None = None, restore_after_setup: bool = False, **batching: Any) -> EmoVerseModule:
    """One `Trainer.fit` of the tiny module under the scaled-down M2SE curriculum (`batching`: the datamodule's
    `max_tokens`, `packing`, `bucket_window`)."""
    torch.manual_seed(0)
    curriculum = Curriculum(stages)
    module = EmoVerseModule("tiny", lora_dropout=0.1, lr=1e-3, warmup_ratio=0.2, curriculum=curriculum)
    data = AMTDataModule(str(amt), batch_size=BATCH, eval_batch_size=BATCH, num_frames=2, seed=0,
                         processor=module.processor, tasks=module.tasks, curriculum=curriculum, **batching)
    callbacks: list[pl.Callback] = [MultiStageCurriculum(curriculum), recorder,
                                    ResumableCheckpoint(str(root), every_n_train_steps=every or 0, keep_epoch_ends=False,
                                                        handle_signals=False)]
    trainer = pl.Trainer(
        max_epochs=curriculum.total_epochs, callbacks=callbacks, reload_dataloaders_every_n_epochs=1,
        strategy=RestoreAfterSetup(torch.device("cpu")) if restore_after_setup else SingleDeviceStrategy("cpu"),
        logger=False, enable_checkpointing=True, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if ckpt_path is None:  # the LR schedule knew the run's length: one optimizer step per batch
        assert trainer.global_step == sum(curriculum.optimizer_steps()) == len(recorder.batches)
    return module


def check_resume(amt: Path, tmp_path: Path, first: int, second: int, stop: int, restore_after_setup: bool = False,
                 **batching: Any) -> None:
    """Fit uninterrupted; fit again, stop after step `stop` and resume from its checkpoint; compare."""
    stages = m2se_small(first, second)
    full = Recorder()
    reference = fit(amt, tmp_path / "full", stages, full, **batching)
    assert len(full.pairs) == (first + 2 * second) * BATCH
    assert {t for _, t in full.pairs[: first * BATCH]} <= {"msa", "fer", "mer"}
    assert {t for _, t in full.pairs[first * BATCH :]} >= {"eri", "ecpe"}
    if not batching:
        assert {len(b) for b in full.batches} == {BATCH}
    assert stop < len(full.batches)

    interrupted = Recorder(stop_at=stop)
    with pytest.raises(Stop):
        fit(amt, tmp_path / "stopped", stages, interrupted, every=stop, **batching)
    assert interrupted.batches == full.batches[:stop]

    rest = Recorder()
    resumed = fit(amt, tmp_path / "resumed", stages, rest, ckpt_path=str(tmp_path / "stopped" / "last.ckpt"),
                  restore_after_setup=restore_after_setup, **batching)
    assert rest.batches == full.batches[stop:]
    want, got = reference.trainable_state_dict(), resumed.trainable_state_dict()
    assert want and want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)
    torch.manual_seed(0)
    initial = EmoVerseModule("tiny", lora_dropout=0.1).state_dict()
    assert any(not torch.equal(initial[name], want[name]) for name in want), "training changed no weight"
    assert any(".vision." in n for n in want), "stage 2 trained the vision encoder"


def test_resume_mid_stage_two(small_amt: Path, tmp_path: Path) -> None:
    # 2 + 2x3 steps; stopped 2 batches into stage 2's first epoch
    check_resume(small_amt, tmp_path, first=2, second=3, stop=4)


def test_resume_when_callbacks_are_restored_after_fit_start(small_amt: Path, tmp_path: Path) -> None:
    # FSDP's restore order on one CPU device, resumed in a stage that trains other parts than the first
    check_resume(small_amt, tmp_path, first=2, second=3, stop=4, restore_after_setup=True)


@pytest.mark.parametrize("stop", [3, 5], ids=["mid-epoch", "epoch-end"])
@pytest.mark.parametrize("packing", [False, True], ids=["token-budget", "packing"])
def test_resume_with_token_budget_batches(small_amt: Path, tmp_path: Path, packing: bool, stop: int) -> None:
    # batches of 1-8 rows under 700 tokens (rows of 60-360 tokens): 1 + 4 + 3 batches (packed: 1 + 3 + 3);
    # step 3 is inside stage 2's first epoch, step 5 ends it (token-budget) or starts the next one (packing)
    check_resume(small_amt, tmp_path, first=2, second=3, stop=stop, max_tokens=700, packing=packing, bucket_window=16)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [7, 9, 12], ids=["mid-epoch", "epoch-end", "second-epoch"])
def test_resume_in_stage_two_slow(small_amt: Path, tmp_path: Path, stop: int) -> None:
    # 4 + 2x5 steps; stage 2 covers steps 5-14, its first epoch ends at step 9
    check_resume(small_amt, tmp_path, first=4, second=5, stop=stop)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [2, 7, 9], ids=["stage-end", "mid-epoch", "epoch-end"])
def test_resume_after_setup_order_slow(small_amt: Path, tmp_path: Path, stop: int) -> None:
    check_resume(small_amt, tmp_path, first=2, second=5, stop=stop, restore_after_setup=True)
