"""MultiStageCurriculum on a toy module and datamodule that follow its protocol (no emoverse model needed)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from emoverse.checkpointing import ResumableCheckpoint
from emoverse.curriculum import Curriculum, MultiStageCurriculum, Stage, TaskWeightedSampler

TASKS = ("msa", "fer", "mer", "eri", "ecpe")
RECORDS = [{TASKS[i % 5], TASKS[(i * 7) % 5]} for i in range(120)]
STAGES = [
    Stage(name="one", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=40, epochs=1),
    Stage(name="two", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, epochs=2, train=["projector", "lora", "vision"], lr=0.05),
]
BATCH = 4


class PairDataset(Dataset):
    def __getitem__(self, item: tuple[int, str]) -> dict:
        record, task = item
        return {"x": torch.full((4,), record / 100.0) + TASKS.index(task), "record": record, "task": task}

    def __len__(self) -> int:
        return len(RECORDS)


class ToyData(pl.LightningDataModule):
    """What AMTDataModule does with a curriculum: bind it in setup, a stateful loader per epoch."""

    def __init__(self, curriculum: Curriculum) -> None:
        super().__init__()
        self.curriculum = curriculum

    def setup(self, stage: str) -> None:
        self.curriculum.bind(RECORDS, self.trainer.world_size, BATCH)

    def train_dataloader(self) -> StatefulDataLoader:
        sampler = TaskWeightedSampler(self.curriculum, self.trainer.global_rank, self.trainer.current_epoch)
        return StatefulDataLoader(PairDataset(), batch_size=BATCH, sampler=sampler)


class ToyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vision, self.projector, self.lora = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)
        self.pairs: list[tuple[int, str]] = []

    def set_trainable(self, parts: Collection[str]) -> list[nn.Parameter]:
        newly = []
        for name in ("vision", "projector", "lora"):
            for p in getattr(self, name).parameters():
                if name in parts and not p.requires_grad:
                    newly.append(p)
                p.requires_grad_(name in parts)
        return newly

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.pairs.extend(zip(batch["record"].tolist(), batch["task"]))
        return self.lora(self.projector(self.vision(batch["x"]))).pow(2).mean()

    def configure_optimizers(self):  # one group per part, built once
        opt = torch.optim.AdamW([{"params": getattr(self, n).parameters()} for n in ("vision", "projector", "lora")],
                                lr=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit(tmp_path: Path, ckpt: str | None = None, stop: int | None = None, graceful: bool = False
        ) -> tuple[ToyModule, pl.Trainer]:
    module, curriculum = ToyModule(), Curriculum(STAGES, seed=5)
    callbacks: list[pl.Callback] = [MultiStageCurriculum(curriculum),
                                    ResumableCheckpoint(str(tmp_path), every_n_train_steps=stop or 0, handle_signals=False)]
    if stop:
        callbacks.append(StopAt(stop, graceful))
    trainer = pl.Trainer(
        max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1, default_root_dir=tmp_path, reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, datamodule=ToyData(curriculum), ckpt_path=ckpt)
    return module, trainer


class Stopped(Exception):
    pass


class StopAt(pl.Callback):
    def __init__(self, step: int, graceful: bool) -> None:
        self.step, self.graceful = step, graceful

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.graceful:
            raise Stopped  # as a crash or a pre-empted job would

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.graceful:
            trainer.should_stop = True  # as EarlyStopping or a time limit would, mid-epoch


def test_stages_switch_parts_and_mix(tmp_path):
    module, trainer = fit(tmp_path)
    assert len(module.pairs) == 40 + 2 * 80  # stage pools: 40 records, then the remaining 80
    assert {t for _, t in module.pairs[:40]} <= {"msa", "fer", "mer"}
    assert all(task in RECORDS[r] for r, task in module.pairs)
    assert len(trainer.optimizers[0].param_groups) == 3  # as configure_optimizers built them
    assert all(p.requires_grad for p in module.vision.parameters())
    torch.manual_seed(0)
    assert not torch.equal(module.vision.weight, nn.Linear(4, 4).weight)  # stage two trained the vision part


@pytest.mark.parametrize("stop", [10, 15, 30], ids=["stage-one-end", "stage-two-mid-epoch", "stage-two-epoch-end"])
def test_resume_continues_the_sequence(tmp_path, stop):
    # 10: the last batch of stage one (the next epoch is longer); 15: 5 batches into stage two;
    # 30: the last batch of stage two's first epoch (the next is as long)
    full, _ = fit(tmp_path / "full")
    with pytest.raises(Stopped):
        fit(tmp_path / "stopped", stop=stop)
    resumed, _ = fit(tmp_path / "resumed", ckpt=str(tmp_path / "stopped" / "last.ckpt"))
    assert resumed.pairs == full.pairs[stop * BATCH :]
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_run_stopped_mid_epoch_by_should_stop_resumes_mid_epoch(tmp_path):
    # the epoch ends early, so no epoch-end checkpoint may claim it finished
    stop = 15
    full, _ = fit(tmp_path / "full")
    fit(tmp_path / "stopped", stop=stop, graceful=True)
    resumed, _ = fit(tmp_path / "resumed", ckpt=str(tmp_path / "stopped" / "last.ckpt"))
    assert resumed.pairs == full.pairs[stop * BATCH :]
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_wrong_max_epochs_is_an_error(tmp_path):
    curriculum = Curriculum(STAGES)
    trainer = pl.Trainer(max_epochs=2, callbacks=[MultiStageCurriculum(curriculum)], logger=False,
                         enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path,
                         reload_dataloaders_every_n_epochs=1)
    with pytest.raises(ValueError, match="max_epochs=2.*set max_epochs=3"):
        trainer.fit(ToyModule(), datamodule=ToyData(curriculum))


def test_epochs_of_different_lengths_need_a_loader_per_epoch(tmp_path):
    curriculum = Curriculum(STAGES)
    trainer = pl.Trainer(max_epochs=3, callbacks=[MultiStageCurriculum(curriculum)], logger=False,
                         enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="set reload_dataloaders_every_n_epochs=1"):
        trainer.fit(ToyModule(), datamodule=ToyData(curriculum))


def test_a_checkpoint_of_the_old_layout_is_refused():
    old = {"stage": 1, "groups": {}, "peak_lrs": {}, "sampler": {"consumed": 8}}
    with pytest.raises(ValueError, match="predates emoverse's curriculum redesign"):
        MultiStageCurriculum(Curriculum(STAGES)).load_state_dict(old)


def test_a_loader_without_state_is_warned_about(tmp_path):
    class PlainData(ToyData):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(PairDataset(), batch_size=BATCH, sampler=TaskWeightedSampler(self.curriculum))

    curriculum = Curriculum([Stage(name="one", ratios={"msa": 1}, budget="all")])
    trainer = pl.Trainer(max_epochs=1, max_steps=1, callbacks=[MultiStageCurriculum(curriculum)], logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, accelerator="cpu",
                         default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="has no state_dict, so a resume mid-epoch restarts the epoch's draws"):
        trainer.fit(ToyModule(), datamodule=PlainData(curriculum))
