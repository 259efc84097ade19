"""Shared helpers: accuracy and support-weighted F1 from a confusion matrix, length checks."""

from __future__ import annotations

from collections.abc import Sized

import torch
from torch import Tensor


def check_same_length(preds: Sized, target: Sized) -> None:
    """Raise `ValueError` unless `preds` and `target` have the same length."""
    if len(preds) != len(target):
        raise ValueError(f"preds has {len(preds)} items but target has {len(target)}; expected one prediction per target")


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """`num / den` elementwise, 0 where `den` is 0 (sklearn's `zero_division=0`)."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def accuracy_and_weighted_f1(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """Accuracy and support-weighted F1 (sklearn `average="weighted"`).

    Args:
        confusion: `[L, L + 1]` counts, rows = true class, columns = predicted class; the extra
            last column holds predictions outside the label set (unparsable answers). Those count
            as misses of their true class and as a false positive of no class.

    Returns:
        (accuracy, weighted F1) as float64 scalars; 0 when there are no samples.
    """
    confusion = confusion.double()
    num_labels = confusion.shape[0]
    true_positive = confusion.diagonal()
    support = confusion.sum(dim=1)
    predicted = confusion[:, :num_labels].sum(dim=0)
    f1 = safe_div(2 * true_positive, predicted + support)
    total = support.sum()
    return safe_div(true_positive.sum(), total), safe_div((f1 * support).sum(), total)
