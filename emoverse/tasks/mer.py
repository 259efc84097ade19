"""MER: multimodal emotion recognition on MELD, answered with one of seven labels ("Joy.")."""

from __future__ import annotations

import random
from collections.abc import Sequence

from torchmetrics import Metric

from emoverse.data.record import EMOTIONS, AMTRecord
from emoverse.metrics import EmotionAccuracyF1
from emoverse.metrics._utils import check_same_length
from emoverse.tasks.base import Task, check_reward_weights, check_template
from emoverse.tasks.parsing import parse_emotion
from emoverse.tasks.registry import register_task

MER_TEMPLATE = (
    "The person says: '{utterance}' <emotion> Please determine which emotion label in the video represents: "
    "anger, sadness, surprise, disgust, joy, neutral or fear."
)
"""The released EmoVerse MELD prompt (`data/meld_test_data.json`)."""


@register_task
class MER(Task):
    """Seven-way emotion recognition; the answer is the capitalised label and a full stop.

    Parsing: the one emotion the answer asserts, synonyms included (happy → joy, scared → fear,
    calm → neutral, ...; see `parsing.EMOTION_SYNONYMS`); negated mentions ("not happy") are
    removed, and an answer naming several emotions is a hedge and unparsed (`parsing.parse_emotion`).
    Scored by `EmotionAccuracyF1`.

    Reward terms: `correct`, the parsed label equals the gold one.

    Args:
        template: the query; `{utterance}` is replaced by the transcript.
        reward_weights: weights of the reward terms `format` and `correct` (default 0.1, 1.0).
    """

    name = "mer"
    max_new_tokens = 8

    def __init__(self, template: str = MER_TEMPLATE, reward_weights: dict[str, float] | None = None) -> None:
        self.template = check_template(template, "MER.template", frozenset({"utterance"}))
        self.reward_weights = check_reward_weights(reward_weights, "MER", self.default_reward_weights)

    def has_label(self, record: AMTRecord) -> bool:
        return record.labels.emotion is not None

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        return self.template.format(utterance=record.text)

    def response(self, record: AMTRecord) -> str:
        return self.target(record).capitalize() + "."

    def parse(self, text: str, record: AMTRecord | None = None) -> str | None:
        return parse_emotion(text)

    def target(self, record: AMTRecord) -> str:
        self.check_label(record)
        return record.labels.emotion

    def reward_terms(self, prediction: str, target: str) -> dict[str, float]:
        return {"correct": float(prediction == target)}

    def new_metric(self) -> Metric:
        return EmotionAccuracyF1(labels=EMOTIONS)

    def update_metric(self, metric: Metric, predictions: Sequence[str | None], targets: Sequence[str]) -> None:
        check_same_length(predictions, targets)
        metric.update(list(predictions), list(targets))
