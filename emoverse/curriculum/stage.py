"""`Stage`: one step of a multi-stage, multi-task curriculum (which tasks, how often, on which records)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

Part = Literal["projector", "lora", "vision", "audio"]
"""The model parts a stage can train."""

PARTS: tuple[str, ...] = get_args(Part)
DEFAULT_TASKS: tuple[str, ...] = ("msa", "mer", "fer", "eri", "ecpe")
"""The paper's five task names; used when the task registry is not importable yet."""

BUDGET_WORDS: tuple[str, ...] = ("remaining", "all")
SOURCES: tuple[str, ...] = ("mosei", "meld", "ecf", "demo")
"""The record sources a stage may restrict its pool to (`AMTRecord.source`)."""

Objective = Literal["sft", "grpo"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)


@dataclass
class GRPOSettings:
    """The settings of a `Stage(objective="grpo")` (DeepSeekMath's GRPO; `emoverse.grpo`).

    In YAML: `grpo: {group_size: 4, beta: 0.04, temperature: 1.0}` inside the stage's mapping.
    """

    group_size: int = 4
    """G: answers sampled per prompt; advantages are normalised within each prompt's group (>= 2)."""
    beta: float = 0.04
    """Weight of the KL penalty to the reference policy (DeepSeekMath: 0.04; >= 0, 0 turns it off)."""
    clip_eps: float = 0.2
    """epsilon of the clipped policy ratio, clip(ratio, 1 - eps, 1 + eps) (> 0)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); log-probabilities are taken of the same tempered distribution."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]; 1 samples from the whole distribution."""
    max_new_tokens: dict[str, int] | None = None
    """Per task, the most tokens an answer may have (default: the task's own `max_new_tokens`)."""
    reference: Literal["base", "stage_start"] = "base"
    """The reference policy of the KL term: "base" = the same model with its LoRA adapters disabled (no
    copy of any weight); "stage_start" = the model as the stage began (after SFT), from a frozen copy of
    the weights the stage trains (the adapters: a few MB), kept in checkpoints."""

    def __post_init__(self) -> None:
        self.check("GRPOSettings")

    def check(self, where: str) -> None:
        """Raise `ValueError` naming `where`, the field and what was expected."""
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 2:
            raise ValueError(f"{where}: grpo.group_size={g!r}, expected an int >= 2 (advantages are normalised "
                             "within each prompt's group of sampled answers)")
        for name, low, inclusive in (("beta", 0.0, True), ("clip_eps", 0.0, False), ("temperature", 0.0, False)):
            value = getattr(self, name)
            ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                  and (value >= low if inclusive else value > low))
            if not ok:
                raise ValueError(f"{where}: grpo.{name}={value!r}, expected a finite float {'>=' if inclusive else '>'} {low}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"{where}: grpo.top_p={self.top_p!r}, expected a float in (0, 1]")
        budgets = self.max_new_tokens
        if budgets is not None:
            if not isinstance(budgets, dict):
                raise ValueError(f"{where}: grpo.max_new_tokens={budgets!r}, expected None or a mapping task -> int >= 1")
            for task, n in budgets.items():
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise ValueError(f"{where}: grpo.max_new_tokens[{task!r}]={n!r}, expected an int >= 1")
        if self.reference not in ("base", "stage_start"):
            raise ValueError(f"{where}: grpo.reference={self.reference!r}, expected 'base' or 'stage_start'")


def _settings(value: Any, where: str) -> GRPOSettings:
    """A `GRPOSettings` from itself or a mapping of its fields (Python callers may pass a dict)."""
    if isinstance(value, GRPOSettings):
        value.check(where)
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where}: grpo={value!r}, expected a mapping of GRPO settings")
    known = {f.name for f in fields(GRPOSettings)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{where}: grpo has unknown setting(s) {unknown}; expected some of {sorted(known)}")
    try:
        return GRPOSettings(**value)
    except ValueError as err:
        raise ValueError(str(err).replace("GRPOSettings", where, 1)) from None


def known_task_names() -> list[str]:
    """Task names a stage may use: the registered tasks (after importing `emoverse.tasks`) plus the defaults."""
    names = set(DEFAULT_TASKS)
    try:
        import emoverse.tasks  # noqa: F401  (registers the built-in tasks)
        from emoverse.tasks.registry import list_tasks
    except ImportError:  # the task package is not written yet: the defaults stand
        return sorted(names)
    names.update(list_tasks())
    return sorted(names)


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
    train: list[Part] = field(default_factory=lambda: ["projector", "lora"])
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
    objective: Objective = "sft"
    """How the stage trains: "sft" (cross-entropy on the tasks' answers) or "grpo" (reinforcement with
    the tasks' rewards, `Task.reward`; docs/grpo.md)."""
    grpo: GRPOSettings | None = None
    """The GRPO settings of an `objective: grpo` stage (None = the defaults); only for such a stage."""

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
        if not self.train or any(part not in PARTS for part in self.train) or len(set(self.train)) != len(self.train):
            raise ValueError(f"{where}: train={self.train!r}, expected a non-empty list of distinct parts from {list(PARTS)}")
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
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{where}: objective={self.objective!r}, expected one of {list(OBJECTIVES)}")
        if self.objective == "grpo":
            self.grpo = _settings(self.grpo if self.grpo is not None else {}, where)
            stray = sorted(set(self.grpo.max_new_tokens or {}) - set(self.ratios))
            if stray:
                raise ValueError(f"{where}: grpo.max_new_tokens names task(s) {stray} the stage does not draw; "
                                 f"its tasks: {self.tasks}")
        elif self.grpo is not None:
            raise ValueError(f"{where}: grpo settings given but objective={self.objective!r}; set objective: grpo "
                             "or drop grpo")

    @property
    def tasks(self) -> list[str]:
        """The stage's task names, sorted (the order the sampler uses, so dict order never matters)."""
        return sorted(self.ratios)
