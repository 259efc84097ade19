"""`EmotionAccuracyF1`: accuracy and weighted F1 over a fixed emotion label set (MELD)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from emoverse.data.record import EMOTIONS
from emoverse.metrics._utils import accuracy_and_weighted_f1, check_same_length


class EmotionAccuracyF1(Metric):
    """Accuracy and support-weighted F1 (sklearn `average="weighted"`) over `labels`.

    Predictions are compared verbatim with the labels (run the task's parser first). A
    prediction outside `labels` or `None` is a miss of its true class and no class's false
    positive; `None` is also counted in `unparsed`. States are summed confusion counts.

    Args:
        labels: the label set; every target must be one of them.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, labels: Sequence[str] = EMOTIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.labels = tuple(labels)
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels={self.labels!r}: expected a non-empty sequence of distinct labels")
        self._index = {label: i for i, label in enumerate(self.labels)}
        size = len(self.labels)
        self.add_state("confusion", default=torch.zeros(size, size + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unparsed", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str | None], target: Sequence[str]) -> None:
        """Add predicted labels (`None` = unparsable) and true labels."""
        check_same_length(preds, target)
        outside = len(self.labels)
        rows = []
        for label in target:
            if label not in self._index:
                raise ValueError(f"target label {label!r} is not one of labels={self.labels}")
            rows.append(self._index[label])
        cols = [self._index.get(p, outside) if p is not None else outside for p in preds]
        flat = torch.tensor(rows, dtype=torch.long) * (outside + 1) + torch.tensor(cols, dtype=torch.long)
        self.confusion += torch.bincount(flat, minlength=self.confusion.numel()).view_as(self.confusion).to(self.device)
        self.unparsed += sum(p is None for p in preds)

    def compute(self) -> dict[str, Tensor]:
        """Returns `acc`, `weighted_f1` (fractions) and `unparsed` (a count; all values float32)."""
        acc, weighted_f1 = accuracy_and_weighted_f1(self.confusion)
        return {"acc": acc.float(), "weighted_f1": weighted_f1.float(), "unparsed": self.unparsed.float()}


EmotionF1 = EmotionAccuracyF1
