"""Per-task figures computed from a run's predictions rows (`{task, generation, prediction, target}`).

Everything here is plain Python over the JSONL rows `emoverse test` writes (docs/evaluation.md),
so the report needs neither the model nor the task parsers. Rows whose `target` or `prediction`
has the wrong shape are counted as skipped, never raised.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emoverse.data.record import EMOTIONS

UNPARSED = "unparsed"


def by_task(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by their `task`, in first-seen order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["task"], []).append(row)
    return out


def unparsed_counts(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """`{task: (answers, unparsed answers)}`; an answer is unparsed when its `prediction` is null."""
    return {task: (len(mine), sum(r.get("prediction") is None for r in mine)) for task, mine in by_task(rows).items()}


@dataclass
class Confusion:
    """A confusion matrix: `matrix[i][j]` = rows with gold `labels[i]` answered `columns[j]`."""

    labels: list[str]
    columns: list[str]
    matrix: list[list[int]]
    skipped: int = 0


def f1_scores(confusion: Confusion) -> dict[str, float]:
    """Per-label F1 from a confusion matrix (an unparsed answer is a miss for its gold label)."""
    scores = {}
    for i, label in enumerate(confusion.labels):
        tp = confusion.matrix[i][confusion.columns.index(label)] if label in confusion.columns else 0
        gold = sum(confusion.matrix[i])
        predicted = sum(row[confusion.columns.index(label)] for row in confusion.matrix) if label in confusion.columns else 0
        scores[label] = 2 * tp / (gold + predicted) if gold + predicted else math.nan
    return scores


def mer_confusion(rows: Sequence[dict[str, Any]]) -> Confusion:
    """Gold emotion against the answer, over the 7 MELD labels plus an "unparsed" column."""
    labels = list(EMOTIONS)
    columns = [*labels, UNPARSED]
    matrix = [[0] * len(columns) for _ in labels]
    skipped = 0
    for row in rows:
        gold, pred = row.get("target"), row.get("prediction")
        if gold not in labels or (pred is not None and pred not in labels):
            skipped += 1
            continue
        matrix[labels.index(gold)][columns.index(pred if pred is not None else UNPARSED)] += 1
    return Confusion(labels, columns, matrix, skipped)


@dataclass
class Sentiment:
    """MSA answers: polarity confusion (negative / non-negative, as Acc2 N/N) and the gold scores."""

    confusion: Confusion
    correct_scores: list[float] = field(default_factory=list)
    wrong_scores: list[float] = field(default_factory=list)


def msa_polarity(rows: Sequence[dict[str, Any]]) -> Sentiment:
    """Gold polarity (score < 0 negative, else non-negative) against the answer's; gold scores split by hit/miss."""
    labels = ["negative", "non-negative"]
    columns = [*labels, UNPARSED]
    out = Sentiment(Confusion(labels, columns, [[0, 0, 0], [0, 0, 0]]))
    for row in rows:
        gold, pred = row.get("target"), row.get("prediction")
        if not _number(gold) or (pred is not None and not _number(pred)):
            out.confusion.skipped += 1
            continue
        g = int(gold >= 0)
        p = 2 if pred is None else int(pred >= 0)
        out.confusion.matrix[g][p] += 1
        (out.correct_scores if g == p else out.wrong_scores).append(float(gold))
    return out


@dataclass
class CausePairs:
    """ECPE answers: per-emotion pair counts and the emotion-to-cause turn distances of gold pairs."""

    tp: Counter = field(default_factory=Counter)
    fp: Counter = field(default_factory=Counter)
    fn: Counter = field(default_factory=Counter)
    hit_distances: list[int] = field(default_factory=list)
    missed_distances: list[int] = field(default_factory=list)
    skipped: int = 0

    def f1(self) -> dict[str, float]:
        """Pair F1 per emotion (exact (emotion turn, cause turn, emotion) matches), emotions with pairs only."""
        scores = {}
        for emotion in [e for e in EMOTIONS if self.tp[e] + self.fp[e] + self.fn[e]]:
            tp, fp, fn = self.tp[emotion], self.fp[emotion], self.fn[emotion]
            scores[emotion] = 2 * tp / (2 * tp + fp + fn)
        return scores


def ecpe_pairs(rows: Sequence[dict[str, Any]]) -> CausePairs:
    """Match predicted against gold pairs per row; distance = emotion turn - cause turn of each gold pair."""
    out = CausePairs()
    for row in rows:
        target, pred = row.get("target"), row.get("prediction")
        gold = _pairs(target.get("pairs") if isinstance(target, dict) else None)
        guessed = set() if pred is None else _pairs(pred.get("pairs") if isinstance(pred, dict) else None)
        if gold is None or guessed is None:
            out.skipped += 1
            continue
        for pair in gold:
            hit = pair in guessed
            (out.tp if hit else out.fn)[pair[2]] += 1
            (out.hit_distances if hit else out.missed_distances).append(pair[0] - pair[1])
        for pair in guessed - gold:
            out.fp[pair[2]] += 1
    return out


def samples(rows: Sequence[dict[str, Any]], k: int = 8) -> list[dict[str, Any]]:
    """`k` rows spread evenly over the file (the same ones on every call)."""
    if len(rows) <= k:
        return list(rows)
    return [rows[round(i * (len(rows) - 1) / (k - 1))] for i in range(k)] if k > 1 else [rows[0]]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pairs(value: Any) -> set[tuple[int, int, str]] | None:
    """`[[emotion turn, cause turn, emotion], ...]` as a set of tuples; None when it has another shape."""
    if not isinstance(value, list):
        return None
    pairs = set()
    for item in value:
        if (not isinstance(item, (list, tuple)) or len(item) != 3 or not all(isinstance(t, int) for t in item[:2])
                or not isinstance(item[2], str)):
            return None
        pairs.add((item[0], item[1], item[2]))
    return pairs
