"""`TokenF1`: SQuAD-style bag-of-tokens F1 for free-text answers (FER captions, ERI reasons)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from emoverse.metrics._utils import check_same_length

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lowercase alphanumeric tokens; punctuation and whitespace only separate."""
    return _TOKEN.findall(text.lower())


def token_f1(pred: str, target: str) -> float:
    """Harmonic mean of token precision and recall (multiset overlap); 1.0 when both are empty."""
    pred_tokens, target_tokens = tokens(pred), tokens(target)
    if not pred_tokens or not target_tokens:
        return float(pred_tokens == target_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(target_tokens)).values())
    return 2 * overlap / (len(pred_tokens) + len(target_tokens))


class TokenF1(Metric):
    """Mean token F1 and exact match (after tokenisation) between answers and references.

    Chosen over ROUGE/BLEU because it needs no download (torchmetrics' ROUGE wants nltk) and is
    meaningful for one-sentence answers. `None` predictions (nothing generated) score 0 and are
    counted in `unparsed`. States are sums, so DDP reduction is exact.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("f1_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("exact", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unparsed", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str | None], target: Sequence[str]) -> None:
        """Add answers (`None` = no answer) and their reference texts."""
        check_same_length(preds, target)
        for pred, ref in zip(preds, target):
            if pred is None:
                self.unparsed += 1
                continue
            self.f1_sum += token_f1(pred, ref)
            self.exact += tokens(pred) == tokens(ref)
        self.total += len(target)

    def compute(self) -> dict[str, Tensor]:
        """Returns `token_f1`, `exact_match` (fractions) and `unparsed` (a count; all values float32)."""
        total = self.total.clamp(min=1).double()
        return {
            "token_f1": (self.f1_sum / total).float(),
            "exact_match": (self.exact.double() / total).float(),
            "unparsed": self.unparsed.float(),
        }
