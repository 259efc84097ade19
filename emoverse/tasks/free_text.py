"""`FreeTextTask`: tasks whose answer is one text label of the record, scored by token F1."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from torchmetrics import Metric

from emoverse.data.record import AMTRecord
from emoverse.metrics import TokenF1
from emoverse.metrics._utils import check_same_length
from emoverse.metrics.text import token_f1
from emoverse.tasks.base import Task, check_reward_weights, check_template


class FreeTextTask(Task):
    """The answer is `record.labels.<label_field>` verbatim; the parse is the stripped generation
    (empty → `None`); `TokenF1` scores token F1 and exact match against the reference.

    Subclasses set `name`, `label_field`, optionally `frames`, and a default `template`.

    Reward terms: `correct`, the token F1 against the reference (`metrics.text.token_f1`, what
    `TokenF1` averages).

    Args:
        template: the query; may use `{utterance}` (the transcript).
        reward_weights: weights of the reward terms `format` and `correct` (default 0.1, 1.0).
    """

    label_field: ClassVar[str]
    max_new_tokens = 64

    def __init__(self, template: str, reward_weights: dict[str, float] | None = None) -> None:
        self.template = check_template(template, f"{type(self).__name__}.template", frozenset({"utterance"}))
        self.reward_weights = check_reward_weights(reward_weights, type(self).__name__, self.default_reward_weights)

    def has_label(self, record: AMTRecord) -> bool:
        return getattr(record.labels, self.label_field) is not None

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        return self.template.format(utterance=record.text)

    def response(self, record: AMTRecord) -> str:
        return self.target(record)

    def parse(self, text: str, record: AMTRecord | None = None) -> str | None:
        return text.strip() or None

    def target(self, record: AMTRecord) -> str:
        self.check_label(record)
        return getattr(record.labels, self.label_field)

    def reward_terms(self, prediction: str, target: str) -> dict[str, float]:
        return {"correct": token_f1(prediction, target)}

    def new_metric(self) -> Metric:
        return TokenF1()

    def update_metric(self, metric: Metric, predictions: Sequence[str | None], targets: Sequence[str]) -> None:
        check_same_length(predictions, targets)
        metric.update(list(predictions), list(targets))
