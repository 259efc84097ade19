"""MSA: multimodal sentiment analysis on CMU-MOSEI, answered "Positive." or "Negative."."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from torchmetrics import Metric

from emoverse.data.record import AMTRecord
from emoverse.metrics import SentimentAcc2
from emoverse.metrics._utils import check_same_length
from emoverse.tasks.base import Task, check_reward_weights, check_template
from emoverse.tasks.parsing import parse_sentiment
from emoverse.tasks.registry import register_task

MSA_TEMPLATE = (
    "The person says: '{utterance}' <sentiment> Please determine the sentiment of the person in the video: "
    "positive or negative."
)


@register_task
class MSA(Task):
    """Binary sentiment: score ≥ 0 is answered "Positive.", score < 0 "Negative." (N/N scheme).

    Parsing: the one of positive/negative/neutral the answer asserts (neutral reads as 0.0; negated
    or several → unparsed); without such a word, its one number in [-3, 3] is taken as a score
    (`parsing.parse_sentiment`). Scored by `SentimentAcc2`.

    Reward terms: `correct`, the polarity matches under the N/N scheme of Acc2 (score >= 0 is
    non-negative); `closeness`, 1 - |answer - gold| / 6 on the [-3, 3] scale (weight 0 by default:
    the trained answer is a word, read as +-1, so closeness would mostly reward gold scores near +-1).

    Args:
        template: the query; `{utterance}` is replaced by the transcript.
        reward_weights: weights of the reward terms `format`, `correct`, `closeness`
            (default 0.1, 1.0, 0.0).
    """

    name = "msa"
    max_new_tokens = 8
    default_reward_weights = {"format": 0.1, "correct": 1.0, "closeness": 0.0}

    def __init__(self, template: str = MSA_TEMPLATE, reward_weights: dict[str, float] | None = None) -> None:
        self.template = check_template(template, "MSA.template", frozenset({"utterance"}))
        self.reward_weights = check_reward_weights(reward_weights, "MSA", self.default_reward_weights)

    def has_label(self, record: AMTRecord) -> bool:
        return record.labels.sentiment is not None

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        return self.template.format(utterance=record.text)

    def response(self, record: AMTRecord) -> str:
        return "Positive." if self.target(record) >= 0 else "Negative."

    @property
    def choices(self) -> tuple[str, ...]:
        return ("Positive.", "Negative.")  # the trained responses

    def parse(self, text: str, record: AMTRecord | None = None) -> float | None:
        return parse_sentiment(text)

    def target(self, record: AMTRecord) -> float:
        self.check_label(record)
        return float(record.labels.sentiment)

    def reward_terms(self, prediction: float, target: float) -> dict[str, float]:
        return {"correct": float((prediction >= 0) == (target >= 0)),
                "closeness": 1.0 - min(abs(prediction - target), 6.0) / 6.0}

    def new_metric(self) -> Metric:
        return SentimentAcc2()

    def update_metric(self, metric: Metric, predictions: Sequence[float | None], targets: Sequence[float]) -> None:
        check_same_length(predictions, targets)
        metric.update([math.nan if p is None else float(p) for p in predictions], [float(t) for t in targets])
