"""`StageSchedule`: the LR factor per optimizer step, warm-up + cosine decay times the step's stage lr factor."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


class StageSchedule:
    """`LambdaLR`'s `lr_lambda`: linear warm-up, cosine decay to zero, each step scaled by its stage's factor.

    The warm-up + cosine curve is transformers' `get_cosine_schedule_with_warmup` (half a cosine
    period). The stage of a step follows from the optimizer steps of each epoch, so a stage's lr
    holds from its very first step, and the schedule is a pure function of the step: it has no
    state to rebuild when a run resumes (its fields are what `LambdaLR.state_dict` saves).

    Args:
        total: optimizer steps of the whole run.
        warmup_ratio: share of `total` spent warming up.
        epoch_steps: optimizer steps of each epoch (empty: one factor for the whole run).
        epoch_scales: the lr factor of each epoch (its stage's `lr` / the module's `lr`).
    """

    def __init__(self, total: int, warmup_ratio: float, epoch_steps: Sequence[int] = (),
                 epoch_scales: Sequence[float] = ()) -> None:
        if len(epoch_steps) != len(epoch_scales):
            raise ValueError(f"StageSchedule: {len(epoch_steps)} epoch lengths but {len(epoch_scales)} scales")
        self.total, self.warmup = total, int(warmup_ratio * total)
        self.ends = [sum(epoch_steps[: i + 1]) for i in range(len(epoch_steps))]  # first step after each epoch
        self.scales = list(epoch_scales)

    def scale(self, step: int) -> float:
        """The stage lr factor of optimizer step `step` (0-based)."""
        if not self.scales:
            return 1.0
        return self.scales[min(bisect.bisect_right(self.ends, step), len(self.scales) - 1)]

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            curve = step / max(1, self.warmup)
        else:
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            curve = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return curve * self.scale(step)
