"""`Stage`: one step of a multi-stage, multi-task curriculum (which tasks, how often, on which records)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from emoverse.backbones.base import TRAIN_PARTS, TrainPart
from emoverse.data.record import SOURCES
from emoverse.objectives.base import Objective, get_objective

BUDGET_WORDS: tuple[str, ...] = ("remaining", "all")


def known_task_names() -> list[str]:
    """Task names a stage may use: the registered tasks (the built-in ones and any a package registered)."""
    import emoverse.tasks  # noqa: F401  (registers the built-in tasks)
    from emoverse.tasks.registry import list_tasks

    return list_tasks()


@dataclass
class Stage:
    """One curriculum stage: the task mix, the records it draws from, its length and what it trains.

    In YAML (LightningCLI) a stage is a plain mapping, e.g.
    `{name: perception, ratios: {msa: 6, fer: 3, mer: 1}, budget: 15000, epochs: 2}`.
    """

    name: str
    """Short name, used in logs and error messages."""
    ratios: dict[str, float]
    """Task sampling ratios, e.g. `{"msa": 6, "fer": 3, "mer": 1}`; positive, normalised by their sum."""
    budget: int | Literal["remaining", "all"] = "remaining"
    """Records of the stage's pool: a count drawn at random from the records no earlier stage used that
    carry a label of one of the stage's tasks; "remaining" = every record no earlier stage used;
    "all" = every record."""
    epochs: int = 1
    """Epochs of this stage; stage boundaries follow the trainer's epochs."""
    samples_per_epoch: int | None = None
    """Draws in one epoch of this stage, over all ranks; None = the number of usable pool records."""
    train: list[TrainPart] = field(default_factory=lambda: ["projector", "lora"])
    """Model parts trained in this stage (the others are frozen)."""
    lr: float | None = None
    """Peak learning rate of every parameter group in this stage; None keeps the optimizer's own."""
    sources: list[str] | None = None
    """Restrict the stage's pool to records of these sources (e.g. `[meld]` for the Table 5 single-task
    MER ablation); None = every source."""
    schedule: Literal["run", "stage"] = "run"
    """The lr curve of the stage: "run" = its `lr` scales the run's one warm-up + cosine (a late stage
    gets the curve's tail); "stage" = a warm-up + cosine of its own over its steps, from its `lr` (e.g. a
    GRPO stage after the supervised ones)."""
    objective: Objective | str = "sft"
    """How the stage trains, an `emoverse.objectives.Objective`: in YAML `{class_path:
    emoverse.objectives.GRPO, init_args: {group_size: 4}}`, or a registered name for its defaults ("sft":
    cross-entropy on the tasks' answers, the default; "grpo": reinforcement with the tasks' rewards,
    docs/grpo.md; "preference": DPO on the model's own answers ranked by the tasks' rewards,
    docs/preference.md). Always an `Objective` after construction."""

    def __post_init__(self) -> None:
        where = f"Stage {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Stage.name={self.name!r}: expected a non-empty string")
        if not isinstance(self.ratios, dict) or not self.ratios:
            raise ValueError(f"{where}: ratios={self.ratios!r}, expected a non-empty mapping task -> positive weight")
        known = known_task_names()
        unknown = sorted(set(self.ratios) - set(known))
        if unknown:
            raise ValueError(f"{where}: ratios has unknown task(s) {unknown}; known tasks: {known}")
        for task, weight in self.ratios.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"{where}: ratios[{task!r}]={weight!r}, expected a positive finite number")
        self.ratios = {task: float(weight) for task, weight in self.ratios.items()}
        if isinstance(self.budget, str):
            if self.budget not in BUDGET_WORDS:
                raise ValueError(f"{where}: budget={self.budget!r}, expected a positive int or one of {list(BUDGET_WORDS)}")
        elif isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"{where}: budget={self.budget!r}, expected a positive int or one of {list(BUDGET_WORDS)}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"{where}: epochs={self.epochs!r}, expected an int >= 1")
        spe = self.samples_per_epoch
        if spe is not None and (isinstance(spe, bool) or not isinstance(spe, int) or spe < 1):
            raise ValueError(f"{where}: samples_per_epoch={spe!r}, expected None or an int >= 1")
        if not self.train or any(part not in TRAIN_PARTS for part in self.train) or len(set(self.train)) != len(self.train):
            raise ValueError(f"{where}: train={self.train!r}, expected a non-empty list of distinct parts from {list(TRAIN_PARTS)}")
        self.train = list(self.train)
        if self.lr is not None and (not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0):
            raise ValueError(f"{where}: lr={self.lr!r}, expected None or a positive float")
        if self.sources is not None:
            if (not isinstance(self.sources, (list, tuple)) or not self.sources
                    or any(s not in SOURCES for s in self.sources) or len(set(self.sources)) != len(self.sources)):
                raise ValueError(f"{where}: sources={self.sources!r}, expected None or a non-empty list of "
                                 f"distinct sources from {list(SOURCES)}")
            self.sources = list(self.sources)
        if self.schedule not in ("run", "stage"):
            raise ValueError(f"{where}: schedule={self.schedule!r}, expected 'run' or 'stage'")
        self.objective = get_objective(self.objective, f"{where}: objective")
        try:
            self.objective.check_stage(self)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    @property
    def tasks(self) -> list[str]:
        """The stage's task names, sorted (the order the sampler uses, so dict order never matters)."""
        return sorted(self.ratios)
