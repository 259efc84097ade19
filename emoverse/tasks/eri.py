"""ERI: emotion reason inference, a free-text explanation of why the person feels as they do."""

from __future__ import annotations

import random
from collections.abc import Sequence

from torchmetrics import Metric

from emoverse.data.record import AMTRecord
from emoverse.metrics import TokenF1
from emoverse.metrics._utils import check_same_length
from emoverse.tasks.base import Task, check_template
from emoverse.tasks.registry import register_task

ERI_TEMPLATE = (
    "The person says: '{utterance}' <reason> Please infer the reason for the emotion of the person in the "
    "video, considering the facial expression, the words and the scene."
)


@register_task
class ERI(Task):
    """Emotion reason inference; the answer is `labels.reason`.

    Parsing: the stripped generation; empty → `None`. Scored by `TokenF1` against the reference
    reason (a cheap lexical proxy: reasons are LLM-written, so exact match is near zero).

    Args:
        template: the query; `{utterance}` is replaced by the transcript.
    """

    name = "eri"
    media = "video"
    max_new_tokens = 64

    def __init__(self, template: str = ERI_TEMPLATE) -> None:
        self.template = check_template(template, "ERI.template", frozenset({"utterance"}))

    def has_label(self, record: AMTRecord) -> bool:
        return record.labels.reason is not None

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        return self.template.format(utterance=record.text)

    def response(self, record: AMTRecord) -> str:
        return self.target(record)

    def parse(self, text: str, record: AMTRecord | None = None) -> str | None:
        return text.strip() or None

    def target(self, record: AMTRecord) -> str:
        self.check_label(record)
        return record.labels.reason

    def new_metric(self) -> Metric:
        return TokenF1()

    def update_metric(self, metric: Metric, predictions: Sequence[str | None], targets: Sequence[str]) -> None:
        check_same_length(predictions, targets)
        metric.update(list(predictions), list(targets))
