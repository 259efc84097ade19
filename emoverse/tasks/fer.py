"""FER: describe the facial expression of the peak frame through its action units."""

from __future__ import annotations

import random
from collections.abc import Sequence

from torchmetrics import Metric

from emoverse.data.record import AMTRecord
from emoverse.metrics import TokenF1
from emoverse.metrics._utils import check_same_length
from emoverse.tasks.base import Task, check_template
from emoverse.tasks.registry import register_task

FER_TEMPLATE = (
    "<fer> Please describe the facial expression of the person in the image in terms of the facial "
    "action units that are active."
)


@register_task
class FER(Task):
    """Facial expression caption (peak frame only); the answer is `labels.au_caption`.

    Parsing: the stripped generation; empty → `None`. Scored by `TokenF1` (token F1 and exact
    match against the caption).

    Args:
        template: the query; may use `{utterance}` (the transcript), needs no placeholder.
    """

    name = "fer"
    media = "peak"
    max_new_tokens = 64

    def __init__(self, template: str = FER_TEMPLATE) -> None:
        self.template = check_template(template, "FER.template", frozenset({"utterance"}))

    def has_label(self, record: AMTRecord) -> bool:
        return record.labels.au_caption is not None

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        return self.template.format(utterance=record.text)

    def response(self, record: AMTRecord) -> str:
        return self.target(record)

    def parse(self, text: str, record: AMTRecord | None = None) -> str | None:
        return text.strip() or None

    def target(self, record: AMTRecord) -> str:
        self.check_label(record)
        return record.labels.au_caption

    def new_metric(self) -> Metric:
        return TokenF1()

    def update_metric(self, metric: Metric, predictions: Sequence[str | None], targets: Sequence[str]) -> None:
        check_same_length(predictions, targets)
        metric.update(list(predictions), list(targets))
