"""MSA: multimodal sentiment analysis on CMU-MOSEI, answered "Positive." or "Negative."."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from torchmetrics import Metric

from emoverse.data.record import AMTRecord
from emoverse.metrics import SentimentAcc2
from emoverse.metrics._utils import check_same_length
from emoverse.tasks.base import Task, check_template
from emoverse.tasks.parsing import parse_sentiment
from emoverse.tasks.registry import register_task

MSA_TEMPLATE = (
    "The person says: '{utterance}' <sentiment> Please determine the sentiment of the person in the video: "
    "positive or negative."
)


@register_task
class MSA(Task):
    """Binary sentiment: score ≥ 0 is answered "Positive.", score < 0 "Negative." (N/N scheme).

    Parsing: the first of positive/negative/neutral named wins (neutral reads as 0.0); without
    such a word, the first number in [-3, 3] is taken as a score. Scored by `SentimentAcc2`.

    Args:
        template: the query; `{utterance}` is replaced by the transcript.
    """

    name = "msa"
    media = "video"
    max_new_tokens = 8

    def __init__(self, template: str = MSA_TEMPLATE) -> None:
        self.template = check_template(template, "MSA.template", frozenset({"utterance"}))

    def has_label(self, record: AMTRecord) -> bool:
        return record.labels.sentiment is not None

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        return self.template.format(utterance=record.text)

    def response(self, record: AMTRecord) -> str:
        return "Positive." if self.target(record) >= 0 else "Negative."

    def parse(self, text: str, record: AMTRecord | None = None) -> float | None:
        return parse_sentiment(text)

    def target(self, record: AMTRecord) -> float:
        self.check_label(record)
        return float(record.labels.sentiment)

    def new_metric(self) -> Metric:
        return SentimentAcc2()

    def update_metric(self, metric: Metric, predictions: Sequence[float | None], targets: Sequence[float]) -> None:
        check_same_length(predictions, targets)
        metric.update([math.nan if p is None else float(p) for p in predictions], [float(t) for t in targets])
