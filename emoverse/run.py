"""`curriculum_run`: from Python, a curriculum given once wires the module, the datamodule and the Trainer as
`emoverse fit` does (the one place both take their Trainer settings from)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl

from emoverse.curriculum.callback import MultiStageCurriculum
from emoverse.curriculum.curriculum import Curriculum
from emoverse.data.datamodule import AMTDataModule
from emoverse.module import EmoVerseModule


def curriculum_trainer_args(total_epochs: int, trainer: Mapping[str, Any]) -> dict[str, Any]:
    """The Trainer settings a curriculum implies, on top of `trainer`: `max_epochs` = the stages' epochs (a
    given value is checked by `MultiStageCurriculum.setup`) and the train loader rebuilt every epoch
    (`reload_dataloaders_every_n_epochs: 1`, since each epoch's draws and each stage's batches differ).
    `emoverse fit` applies the same rule to the YAML's `trainer:`."""
    out = dict(trainer)
    if out.get("max_epochs") is None:
        out["max_epochs"] = total_epochs
    if out.get("reload_dataloaders_every_n_epochs") in (None, 0):
        out["reload_dataloaders_every_n_epochs"] = 1
    return out


@dataclass
class CurriculumRun:
    """A module, a datamodule and a Trainer that share one `Curriculum` (`curriculum_run`).

    Attributes:
        curriculum: the stages.
        module: the `EmoVerseModule` (its LR schedule and per-stage objectives follow the curriculum).
        data: the `AMTDataModule` (its train loader draws what the curriculum plans).
        trainer: the Trainer, with `MultiStageCurriculum(curriculum)` among its callbacks.
    """

    curriculum: Curriculum
    module: EmoVerseModule
    data: AMTDataModule
    trainer: pl.Trainer

    def fit(self, ckpt_path: str | None = None) -> EmoVerseModule:
        """Train through every stage (resuming from `ckpt_path` if given); returns the module."""
        self.trainer.fit(self.module, datamodule=self.data, ckpt_path=ckpt_path)
        return self.module

    def test(self, ckpt_path: str | None = None) -> list[dict[str, float]]:
        """Evaluate on the test split (`Trainer.test`)."""
        return self.trainer.test(self.module, datamodule=self.data, ckpt_path=ckpt_path)


def curriculum_run(curriculum: Curriculum, model: Mapping[str, Any] | None = None,
                   data: Mapping[str, Any] | None = None, trainer: Mapping[str, Any] | None = None) -> CurriculumRun:
    """Build the module, the datamodule and the Trainer of one curriculum, wired as `emoverse fit` wires them.

    The curriculum goes to the module (LR schedule, per-stage lr and objectives), to the datamodule (the train
    loader's draws) and to the `MultiStageCurriculum` callback (each stage's trainable parts); the datamodule
    gets the module's processor and tasks; the Trainer gets the curriculum's epochs and a train loader rebuilt
    every epoch (`curriculum_trainer_args`).

    Args:
        curriculum: the stages.
        model: `EmoVerseModule` arguments (not `curriculum`), e.g. `{"backbone": "tiny", "lr": 3e-3}`.
        data: `AMTDataModule` arguments (not `curriculum`, `processor`, `tasks`), e.g.
            `{"path": "data/demo_amt", "demo": True, "batch_size": 16}`.
        trainer: `lightning.pytorch.Trainer` arguments; `callbacks` are kept, the curriculum's callback added.

    Raises:
        ValueError: `model` or `data` sets what the curriculum wires.
    """
    model, data, trainer = dict(model or {}), dict(data or {}), dict(trainer or {})
    for name, given, wired in (("model", model, ("curriculum",)), ("data", data, ("curriculum", "processor", "tasks"))):
        clash = sorted(set(given) & set(wired))
        if clash:
            raise ValueError(f"curriculum_run: {name} sets {clash}, which the curriculum run wires itself; drop them")
    module = EmoVerseModule(**model, curriculum=curriculum)
    datamodule = AMTDataModule(**data, curriculum=curriculum, processor=module.processor, tasks=module.tasks)
    args = curriculum_trainer_args(curriculum.total_epochs, trainer)
    args["callbacks"] = [*(args.get("callbacks") or []), MultiStageCurriculum(curriculum)]
    return CurriculumRun(curriculum, module, datamodule, pl.Trainer(**args))
