"""MultiStageCurriculum on a toy module and datamodule that follow its protocol (no emoverse model needed)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from emoverse.curriculum import MultiStageCurriculum, Stage, TaskWeightedSampler

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
    def __init__(self) -> None:
        super().__init__()
        self.train_sampler: TaskWeightedSampler | None = None

    def use_curriculum(self, stages: list[Stage]) -> None:
        self.train_sampler = TaskWeightedSampler(RECORDS, stages, seed=5)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PairDataset(), batch_size=BATCH, sampler=self.train_sampler)


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

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit(tmp_path: Path, ckpt: str | None = None, every: int | None = None) -> tuple[ToyModule, pl.Trainer]:
    module = ToyModule()
    callbacks: list[pl.Callback] = [MultiStageCurriculum(STAGES)]
    if every:
        callbacks.append(pl.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=every, save_top_k=-1, filename="{step}"))
        callbacks.append(pl.callbacks.ModelCheckpoint(tmp_path, every_n_epochs=1, save_top_k=-1, filename="{epoch}"))
    trainer = pl.Trainer(
        max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=bool(every), accelerator="cpu", devices=1, default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=ToyData(), ckpt_path=ckpt)
    return module, trainer


def test_stages_switch_parts_groups_and_mix(tmp_path):
    module, trainer = fit(tmp_path)
    assert len(module.pairs) == 40 + 2 * 80  # stage pools: 40 records, then the remaining 80
    assert {t for _, t in module.pairs[:40]} <= {"msa", "fer", "mer"}
    assert all(task in RECORDS[r] for r, task in module.pairs)
    opt = trainer.optimizers[0]
    assert len(opt.param_groups) == 2  # vision joined as a new group in stage two
    assert all(g["initial_lr"] == 0.05 for g in opt.param_groups)
    assert len(trainer.lr_scheduler_configs[0].scheduler.base_lrs) == 2
    assert all(p.requires_grad for p in module.vision.parameters())
    assert trainer.callback_metrics["curriculum/stage"] == 1.0


def test_resume_continues_the_sequence(tmp_path):
    full, _ = fit(tmp_path, every=5)
    # step 10: the last batch of stage one (the next epoch is longer); 15: stage two, 5 batches into
    # its first epoch; 30: the last batch of stage two's first epoch (the next is as long)
    # epoch=0: saved at on_train_epoch_end of stage one
    for name, step in (("step=10", 10), ("step=15", 15), ("step=30", 30), ("epoch=0", 10)):
        resumed, _ = fit(tmp_path / name, ckpt=str(tmp_path / f"{name}.ckpt"))
        assert resumed.pairs == full.pairs[step * BATCH :], name
        for a, b in zip(full.parameters(), resumed.parameters()):
            torch.testing.assert_close(a, b)


def test_wrong_max_epochs_is_an_error(tmp_path):
    trainer = pl.Trainer(max_epochs=2, callbacks=[MultiStageCurriculum(STAGES)], logger=False, enable_progress_bar=False,
                         accelerator="cpu", default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="max_epochs=2.*set max_epochs=3"):
        trainer.fit(ToyModule(), datamodule=ToyData())
