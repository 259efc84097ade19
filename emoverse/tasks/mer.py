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

MER_CONTEXT_TEMPLATE = (
    "The conversation so far:\n{context}\n"
    "Now {speaker} says: '{utterance}' <emotion> Please determine which emotion label represents what {speaker} "
    "feels in this utterance: anger, sadness, surprise, disgust, joy, neutral or fear."
)
"""MER with the dialogue's preceding turns (`MER(context_turns=N)`): a variant beyond the paper's prompts, whose
released MELD prompts show the utterance alone; the turns are `speaker: text` lines, without their labels."""


@register_task
class MER(Task):
    """Seven-way emotion recognition; the answer is the capitalised label and a full stop.

    Parsing: the one emotion the answer asserts, synonyms included (happy → joy, scared → fear,
    calm → neutral, ...; see `parsing.EMOTION_SYNONYMS`); negated mentions ("not happy") are
    removed, and an answer naming several emotions is a hedge and unparsed (`parsing.parse_emotion`).
    Scored by `EmotionAccuracyF1`.

    Reward terms: `correct`, the parsed label equals the gold one.

    Args:
        template: the query; `{utterance}` is replaced by the transcript (with `context_turns`, also `{context}`,
            the preceding turns as `speaker: text` lines, and `{speaker}`); default: the paper's prompt, or
            `MER_CONTEXT_TEMPLATE` with `context_turns`.
        reward_weights: weights of the reward terms `format` and `correct` (default 0.1, 1.0).
        context_turns: show up to this many of the dialogue's turns before the utterance (the record's `context`
            turns with a lower `turn`; MELD AMT built with `meld.context: preceding`, or ECF); 0 (default): the
            paper's prompt, the utterance alone. A record without earlier turns reads "(the conversation starts
            here)".
    """

    name = "mer"
    max_new_tokens = 8

    def __init__(self, template: str | None = None, reward_weights: dict[str, float] | None = None,
                 context_turns: int = 0) -> None:
        if isinstance(context_turns, bool) or not isinstance(context_turns, int) or context_turns < 0:
            raise ValueError(f"MER.context_turns={context_turns!r}; expected an integer >= 0 (0: the utterance alone)")
        self.context_turns = context_turns
        fields = frozenset({"utterance", "context", "speaker"}) if context_turns else frozenset({"utterance"})
        default = MER_CONTEXT_TEMPLATE if context_turns else MER_TEMPLATE
        self.template = check_template(default if template is None else template, "MER.template", fields)
        self.reward_weights = check_reward_weights(reward_weights, "MER", self.default_reward_weights)

    def has_label(self, record: AMTRecord) -> bool:
        return record.labels.emotion is not None

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        if not self.context_turns:
            return self.template.format(utterance=record.text)
        earlier = sorted((u for u in record.context if record.turn is None or u.turn < record.turn), key=lambda u: u.turn)
        lines = [f"{u.speaker}: {u.text}" for u in earlier[-self.context_turns:]]
        return self.template.format(utterance=record.text, speaker=record.speaker or "the speaker",
                                    context="\n".join(lines) or "(the conversation starts here)")

    def response(self, record: AMTRecord) -> str:
        return self.target(record).capitalize() + "."

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(emotion.capitalize() + "." for emotion in EMOTIONS)  # the trained responses

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
