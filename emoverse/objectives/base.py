"""`Objective`: how a curriculum stage trains, as an object the module, datamodule and curriculum ask.

Everything that differs between objectives lives in the objective: the batches its train loader makes
(`collator`), whether its batches may follow a token budget (`uses_token_budget`), the training step
(loss from the module and a batch, and what it logs), the checks it needs of the stage and the model,
and its checkpoint state. The module, the datamodule and the curriculum never branch on which
objective a stage has, so a new objective is one new file in `emoverse/objectives/` (registered by
name with `@register_objective` for the short YAML form `objective: <name>`) plus its config.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from emoverse.backbones.base import Backbone, BackboneProcessor
    from emoverse.curriculum.stage import Stage
    from emoverse.data.batches import GenerationBatch, TrainBatch
    from emoverse.tasks.base import Task

Collator = Callable[[Sequence[dict[str, Any]]], "TrainBatch | GenerationBatch"]
"""A picklable callable from examples (`make_example`) to a typed batch; the train loader calls it in its workers."""


class Objective(ABC):
    """How a stage trains. Subclasses set `name` and implement `collator` and `training_step`.

    In YAML a stage names its objective as an object, `objective: {class_path: emoverse.objectives.GRPO,
    init_args: {group_size: 4}}`, or by its registered name with default settings, `objective: grpo`
    (`objective` omitted: supervised fine-tuning, `SFT`).

    Attributes:
        name: the registered short name ("sft", "grpo", "preference").
        uses_token_budget: whether the stage's batches follow `AMTDataModule(max_tokens=...)` (token-budget
            batches of training examples); objectives that sample answers batch `batch_size` prompts.
    """

    name: ClassVar[str]
    uses_token_budget: ClassVar[bool] = False

    @abstractmethod
    def collator(self, processor: BackboneProcessor, system_prompt: str | None = None, pack: bool = False) -> Collator:
        """The train loader's collator for this objective's batches.

        Args:
            processor: the backbone's processor.
            system_prompt: optional system message of every prompt.
            pack: token-budget batches are packed into one row (only asked when `uses_token_budget`).
        """

    @abstractmethod
    def training_step(self, module: LightningModule, batch: Any, stage: int) -> torch.Tensor:
        """The loss of one training batch, logged through `module.log`.

        Args:
            module: the `EmoVerseModule` (its `backbone`, `tasks` and `log`).
            batch: what `collator` made, on the module's device.
            stage: the index of the stage in its curriculum.
        """

    def check_stage(self, stage: Stage) -> None:
        """Raise `ValueError` when this objective cannot train `stage` (called when the stage is built;
        the stage prefixes its name). The default accepts every stage."""
        return None

    def check_model(self, stage: Stage, tasks: Mapping[str, Task], backbone: Backbone) -> None:
        """Raise `ValueError` when the model cannot train `stage` with this objective (called when the module
        is built, so a run fails at start, not mid-run). The default accepts every model."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs beyond the weights and the optimizer (kept in the module's checkpoints)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`'s value from a checkpoint (the default has none to restore)."""
        return None

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({settings})"


_OBJECTIVES: dict[str, type[Objective]] = {}
ObjectiveClass = TypeVar("ObjectiveClass", bound=type[Objective])


def register_objective(cls: ObjectiveClass) -> ObjectiveClass:
    """Register an objective class under its `name`, for the short YAML form `objective: <name>`."""
    name = cls.name
    if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
        raise ValueError(f"objective {name!r} is already registered by {_OBJECTIVES[name].__module__}")
    _OBJECTIVES[name] = cls
    return cls


def list_objectives() -> list[str]:
    """The registered objective names, sorted."""
    import emoverse.objectives  # noqa: F401  (registers the built-in objectives)

    return sorted(_OBJECTIVES)


def get_objective(value: Objective | str | Mapping[str, Any], where: str = "objective") -> Objective:
    """An `Objective` from itself, a registered name (built with its default settings) or a mapping
    `{"class_path": "emoverse.objectives.GRPO", "init_args": {...}}` (a YAML config read as plain data).

    Raises:
        ValueError: an unknown name (listing the registered ones), a class path that is not an `Objective`
            or another type, naming `where`.
    """
    if isinstance(value, Objective):
        return value
    names = list_objectives()
    if isinstance(value, str) and value in _OBJECTIVES:
        return _OBJECTIVES[value]()
    if isinstance(value, Mapping) and isinstance(value.get("class_path"), str):
        module, _, name = value["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise ValueError(f"{where}: class_path={value['class_path']!r} is not an importable Objective subclass; "
                             f"registered: {names}")
        return cls(**dict(value.get("init_args") or {}))
    raise ValueError(f"{where}={value!r}, expected an Objective (class_path/init_args in YAML) or one of {names}")
