"""`ECPEPairF1`: emotion-cause pair F1 as the SemEval-2024 Task 3 (Subtask 2) scorer defines it."""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from emoverse.data.record import EMOTIONS

Pair = tuple[str | int, int, int, str]
"""(conversation_id, emotion_utterance, cause_utterance, emotion); utterances are 1-based."""

Compat = Literal["semeval", "emoverse-release"]
COMPAT_MODES: tuple[str, ...] = get_args(Compat)

SCORED_EMOTIONS: tuple[str, ...] = tuple(e for e in EMOTIONS if e != "neutral")
_EPS = 1e-8  # the official scorer adds it to every P/R/F1 denominator


def conversation_key(conversation_id: str | int) -> int:
    """A stable 63-bit integer for a conversation id (`1375` and `"1375"` give the same key).

    Pairs are stored as int64 tensors so that DDP can gather them; a blake2b hash keeps
    arbitrary string ids (collision odds ~n²/2⁶⁴, negligible for any dataset).
    """
    digest = hashlib.blake2b(str(conversation_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class ECPEPairF1(Metric):
    """Utterance-level emotion-cause pair precision, recall and F1 (ECF 2.0 / SemEval-2024 Task 3).

    Pairs are de-duplicated (gold and predicted, across all updates and ranks). A predicted pair
    is correct iff conversation, emotion utterance, cause utterance and emotion all equal a gold
    pair. Per emotion j of the six non-neutral emotions, `P_j = TP_j / Pred_j`,
    `R_j = TP_j / Gold_j`, `F1_j = 2 P_j R_j / (P_j + R_j)`, each denominator + 1e-8 as in the
    official script. `weighted_*` weight emotion j by `Gold_j / Σ Gold` (the main metric is
    `weighted_f1`); `precision`/`recall`/`f1` are micro over the six emotions. Pairs labelled
    neutral are stored but enter no score.

    Pairs are pooled per conversation, so when answers are collected one target utterance at a
    time (the ECPE task), a predicted pair must belong to the utterance that was asked about:
    otherwise an answer about another turn could match that turn's gold pair. `ECPE.parse` drops
    such pairs (emotion turn != target turn) and counts them in `ignored_pairs`.

    Args:
        compat: `"semeval"` (default) scores every predicted pair, so pairs predicted for an
            utterance without any gold cause are false positives. `"emoverse-release"` reproduces
            the released EmoVerse `compute_result.py`, which skips utterances whose gold answer
            is empty: predicted pairs whose (conversation, emotion utterance) has no gold pair are
            dropped before scoring. (Unlike that script, duplicates are still removed.)

    States are lists of int64 rows `[conversation_key, emotion_utt, cause_utt, emotion_index]`
    (`dist_reduce_fx="cat"`), with `conversation_key` from `conversation_key()`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, compat: Compat = "semeval", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if compat not in COMPAT_MODES:
            raise ValueError(f"compat={compat!r}: expected one of {COMPAT_MODES}")
        self.compat = compat
        self.add_state("pred_pairs", default=[], dist_reduce_fx="cat")
        self.add_state("gold_pairs", default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[Pair], target: Sequence[Pair]) -> None:
        """Add predicted and gold pairs; the two lists need not align one to one.

        Raises:
            ValueError: a pair without four fields, a non-integer or < 1 utterance, or an emotion
                outside the seven labels.
        """
        self.pred_pairs.append(self._encode(preds, "preds"))
        self.gold_pairs.append(self._encode(target, "target"))

    def compute(self) -> dict[str, Tensor]:
        """Returns `precision`, `recall`, `f1`, `weighted_precision`, `weighted_recall`,
        `weighted_f1` and `f1_<emotion>` for the six emotions (fractions)."""
        gold = {tuple(row) for row in _rows(self.gold_pairs).tolist()}
        pred = {tuple(row) for row in _rows(self.pred_pairs).tolist()}
        if self.compat == "emoverse-release":
            asked = {row[:2] for row in gold}
            pred = {row for row in pred if row[:2] in asked}
        n = len(EMOTIONS)
        tp, n_pred, n_gold = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for row in pred:
            n_pred[row[3]] += 1
            tp[row[3]] += row in gold
        for row in gold:
            n_gold[row[3]] += 1
        scored = torch.tensor([EMOTIONS.index(e) for e in SCORED_EMOTIONS])
        tp, n_pred, n_gold = tp[scored], n_pred[scored], n_gold[scored]
        p_j, r_j = tp / (n_pred + _EPS), tp / (n_gold + _EPS)
        f1_j = 2 * p_j * r_j / (p_j + r_j + _EPS)
        weights = n_gold / n_gold.sum() if n_gold.sum() > 0 else torch.zeros_like(n_gold)
        p, r = tp.sum() / (n_pred.sum() + _EPS), tp.sum() / (n_gold.sum() + _EPS)
        out = {
            "precision": p, "recall": r, "f1": 2 * p * r / (p + r + _EPS),
            "weighted_precision": (weights * p_j).sum(), "weighted_recall": (weights * r_j).sum(),
            "weighted_f1": (weights * f1_j).sum(),
            **{f"f1_{e}": f1_j[i] for i, e in enumerate(SCORED_EMOTIONS)},
        }
        return {k: v.float() for k, v in out.items()}

    def _encode(self, pairs: Sequence[Pair], name: str) -> Tensor:
        rows = []
        for pair in pairs:
            if len(pair) != 4:
                raise ValueError(f"{name} pair {pair!r}: expected (conversation_id, emotion_utterance, cause_utterance, emotion)")
            conversation, emotion_utt, cause_utt, emotion = pair
            if emotion not in EMOTIONS:
                raise ValueError(f"{name} pair {pair!r}: emotion {emotion!r} is not one of {EMOTIONS}")
            for field, value in (("emotion_utterance", emotion_utt), ("cause_utterance", cause_utt)):
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                    raise ValueError(f"{name} pair {pair!r}: {field}={value!r}, expected a 1-based int")
            rows.append((conversation_key(conversation), int(emotion_utt), int(cause_utt), EMOTIONS.index(emotion)))
        return torch.tensor(rows, dtype=torch.long, device=self.device).view(-1, 4)


def _rows(state: list[Tensor] | Tensor) -> Tensor:
    if isinstance(state, list) and not state:
        return torch.empty(0, 4, dtype=torch.long)
    return dim_zero_cat(state).view(-1, 4)
