"""`SentimentAcc2`: CMU-MOSEI binary accuracy and weighted F1 under both conventions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from emoverse.metrics._utils import accuracy_and_weighted_f1, check_same_length

_NO_ANSWER = 2  # confusion column of unparsable predictions


class SentimentAcc2(Metric):
    """Acc-2 and weighted F1 for sentiment scores, as MMSA computes them for CMU-MOSEI.

    - negative/non-negative (`acc2_nn`, `f1_nn`): every segment; truth ≥ 0 and prediction ≥ 0
      are "non-negative".
    - negative/positive (`acc2_np`, `f1_np`): segments with truth exactly 0 are dropped; truth > 0
      and prediction > 0 are "positive", so a prediction of exactly 0 is negative (MMSA's `non0`).

    Only the sign of a prediction matters. A NaN prediction means "no parsable answer": it is a
    miss for its true class under both conventions (never a guess of the other class) and is
    counted in `unparsed`. F1 is weighted by true-class support (sklearn `average="weighted"`).
    States are summed confusion counts, so DDP reduction is exact.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("confusion_nn", default=torch.zeros(2, 3, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("confusion_np", default=torch.zeros(2, 3, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor | Sequence[float], target: Tensor | Sequence[float]) -> None:
        """Add predicted and true scores.

        Args:
            preds: predicted scores (any float; NaN = unparsable answer).
            target: true sentiment scores in [-3, 3]; NaN is an error.
        """
        check_same_length(preds, target)
        preds = torch.as_tensor(preds, dtype=torch.float64, device=self.device).flatten()
        target = torch.as_tensor(target, dtype=torch.float64, device=self.device).flatten()
        if target.isnan().any():
            raise ValueError("target contains NaN; expected a true sentiment score for every segment")
        missing = preds.isnan()
        nn_pred = torch.where(missing, _NO_ANSWER, (preds >= 0).long())
        self.confusion_nn += _counts((target >= 0).long(), nn_pred)
        keep = target != 0
        np_pred = torch.where(missing, _NO_ANSWER, (preds > 0).long())
        self.confusion_np += _counts((target[keep] > 0).long(), np_pred[keep])

    def compute(self) -> dict[str, Tensor]:
        """Returns `acc2_nn`, `f1_nn`, `acc2_np`, `f1_np` (fractions) and `unparsed` (a count; all values float32)."""
        acc_nn, f1_nn = accuracy_and_weighted_f1(self.confusion_nn)
        acc_np, f1_np = accuracy_and_weighted_f1(self.confusion_np)
        out = {"acc2_nn": acc_nn, "f1_nn": f1_nn, "acc2_np": acc_np, "f1_np": f1_np}
        out = {k: v.float() for k, v in out.items()}
        out["unparsed"] = self.confusion_nn[:, _NO_ANSWER].sum().float()
        return out


def _counts(truth: Tensor, pred: Tensor) -> Tensor:
    return torch.bincount(truth * 3 + pred, minlength=6).view(2, 3)
