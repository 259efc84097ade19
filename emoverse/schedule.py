"""`StageSchedule`: the LR factor per optimizer step, warm-up + cosine decay times the step's stage lr factor;
`check_optimizer_args`: the module's optimizer settings, checked where they are given."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def check_optimizer_args(lr: float, warmup_ratio: float, weight_decay: float, owner: str = "model.init_args") -> None:
    """Refuse optimizer settings that torch would refuse only when `fit` builds the optimizer, with the
    config key named (`model.init_args.lr=-0.002: ...`) instead of torch's "Invalid learning rate".

    Args:
        lr: the peak learning rate (finite, > 0).
        warmup_ratio: share of the steps spent warming up (in [0, 1)).
        weight_decay: AdamW weight decay (finite, >= 0).
        owner: the config path of these arguments, for the message.

    Raises:
        ValueError: naming the key, the value and what was expected.
    """
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not number(lr) or lr <= 0:
        raise ValueError(f"{owner}.lr={lr!r}: expected a finite learning rate > 0 (the paper's is 1e-5)")
    if not number(warmup_ratio) or not 0 <= warmup_ratio < 1:
        raise ValueError(f"{owner}.warmup_ratio={warmup_ratio!r}: expected a share of the steps in [0, 1)")
    if not number(weight_decay) or weight_decay < 0:
        raise ValueError(f"{owner}.weight_decay={weight_decay!r}: expected a finite float >= 0")


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
        epoch_spans: per epoch, None (the run's curve) or the `(first, end)` optimizer steps of its stage
            when the stage has a warm-up + cosine of its own over them (`Stage(schedule="stage")`).
    """

    def __init__(self, total: int, warmup_ratio: float, epoch_steps: Sequence[int] = (),
                 epoch_scales: Sequence[float] = (), epoch_spans: Sequence[tuple[int, int] | None] = ()) -> None:
        if len(epoch_steps) != len(epoch_scales):
            raise ValueError(f"StageSchedule: {len(epoch_steps)} epoch lengths but {len(epoch_scales)} scales")
        if epoch_spans and len(epoch_spans) != len(epoch_steps):
            raise ValueError(f"StageSchedule: {len(epoch_steps)} epoch lengths but {len(epoch_spans)} spans")
        self.total, self.warmup, self.warmup_ratio = total, int(warmup_ratio * total), warmup_ratio
        self.ends = [sum(epoch_steps[: i + 1]) for i in range(len(epoch_steps))]  # first step after each epoch
        self.scales = list(epoch_scales)
        self.spans = [tuple(s) if s is not None else None for s in epoch_spans]

    def _epoch(self, step: int) -> int:
        return min(bisect.bisect_right(self.ends, step), len(self.scales) - 1)

    def scale(self, step: int) -> float:
        """The stage lr factor of optimizer step `step` (0-based)."""
        if not self.scales:
            return 1.0
        return self.scales[self._epoch(step)]

    def __call__(self, step: int) -> float:
        span = self.spans[self._epoch(step)] if self.spans and self.scales else None
        if span is not None:  # a stage with a curve of its own
            first, end = span
            return _curve(step - first, end - first, int(self.warmup_ratio * (end - first))) * self.scale(step)
        return _curve(step, self.total, self.warmup) * self.scale(step)


def _curve(step: int, total: int, warmup: int) -> float:
    """transformers' `get_cosine_schedule_with_warmup` factor at `step` of `total`."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
