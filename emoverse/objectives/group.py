"""`GroupObjective`: what the objectives that sample G answers per prompt share (GRPO, Preference).

Their sampling settings and checks, their group batches (`GroupCollator`), the stage's reference policy and its
checkpoint state; each subclass adds its own loss settings and `training_step`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from emoverse.objectives.base import Objective
from emoverse.objectives.sampling import (
    GroupCollator,
    Reference,
    ReferenceKind,
    check_max_new_tokens,
    check_sampling_stage,
)
from emoverse.objectives.shared_rows import warn_unshared

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from lightning.pytorch import LightningModule

    from emoverse.backbones.base import Backbone, BackboneProcessor
    from emoverse.curriculum.stage import Stage
    from emoverse.tasks.base import Task


class GroupObjective(Objective):
    """An objective that samples `group_size` answers per prompt and scores them against a reference policy.

    Args:
        group_size: G, answers sampled per prompt (>= 2).
        temperature: sampling temperature (> 0).
        top_p: nucleus sampling mass, in (0, 1].
        max_new_tokens: per task, the most tokens a sampled answer may have (default: the task's own).
        reference: "base" = the model with its LoRA adapters disabled; "stage_start" = the model as the stage
            began, from a frozen copy of the weights the stage trains, kept in checkpoints (`Reference`).
        share_prompts: sample each group from its prompt prefilled once and score it in shared-prompt rows
            (`objectives.shared_rows`); a backbone that cannot share says why at setup and uses repeated rows.
    """

    group_reason = "the answers of each prompt form its group"
    """Why G must be at least 2, in the subclass's terms (its `group_size` error says it)."""

    def __init__(self, group_size: int, temperature: float, top_p: float, max_new_tokens: dict[str, int] | None,
                 reference: ReferenceKind, share_prompts: bool) -> None:
        owner = type(self).__name__
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"{owner}: group_size={group_size!r}, expected an int >= 2 ({self.group_reason})")
        check_positive(owner, "temperature", temperature)
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"{owner}: top_p={top_p!r}, expected a float in (0, 1]")
        if reference not in ("base", "stage_start"):
            raise ValueError(f"{owner}: reference={reference!r}, expected 'base' or 'stage_start'")
        self.group_size = group_size
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.max_new_tokens = check_max_new_tokens(max_new_tokens, owner)
        self.reference = reference
        self.share_prompts = bool(share_prompts)
        self._reference = Reference(reference)

    def collator(self, processor: BackboneProcessor, system_prompt: str | None = None,
                 pack: bool = False) -> GroupCollator:
        return GroupCollator(processor, self.group_size, system_prompt)

    def check_stage(self, stage: Stage) -> None:
        stray = sorted(set(self.max_new_tokens or {}) - set(stage.ratios))
        if stray:
            raise ValueError(f"{type(self).__name__}.max_new_tokens names task(s) {stray} the stage does not draw; "
                             f"its tasks: {stage.tasks}")

    def check_model(self, stage: Stage, tasks: Mapping[str, Task], backbone: Backbone) -> None:
        check_sampling_stage(stage, tasks, backbone, self.name)
        if self.share_prompts:
            warn_unshared(stage, backbone, self.name)

    def reference_policy(self, module: LightningModule, stage: int) -> AbstractContextManager:
        """A context in which `module.backbone` is this stage's reference policy."""
        return self._reference(module, module.backbone, stage)

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self._reference.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._reference.load_state_dict(state.get("reference", {}))


def check_positive(owner: str, name: str, value: float, *, zero: bool = False) -> None:
    """`value` is a finite number > 0 (>= 0 with `zero`), else a ValueError naming `owner.name`."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value >= 0 if zero else value > 0))
    if not ok:
        raise ValueError(f"{owner}: {name}={value!r}, expected a finite float {'>=' if zero else '>'} 0")
