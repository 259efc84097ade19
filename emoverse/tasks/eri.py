"""ERI: emotion reason inference, a free-text explanation of why the person feels as they do."""

from __future__ import annotations

from emoverse.tasks.free_text import FreeTextTask
from emoverse.tasks.registry import register_task

ERI_TEMPLATE = (
    "The person says: '{utterance}' <reason> Please infer the reason for the emotion of the person in the "
    "video, considering the facial expression, the words and the scene."
)


@register_task
class ERI(FreeTextTask):
    """Emotion reason inference; the answer is `labels.reason`.

    Parsing: the stripped generation; empty → `None`. Scored by `TokenF1` against the reference
    reason (a cheap lexical proxy: reasons are LLM-written, so exact match is near zero).
    """

    name = "eri"
    label_field = "reason"

    def __init__(self, template: str = ERI_TEMPLATE, reward_weights: dict[str, float] | None = None) -> None:
        super().__init__(template, reward_weights)
