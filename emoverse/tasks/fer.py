"""FER: describe the facial expression of the peak frame through its action units."""

from __future__ import annotations

from emoverse.tasks.free_text import FreeTextTask
from emoverse.tasks.registry import register_task

FER_TEMPLATE = (
    "<fer> Please describe the facial expression of the person in the image in terms of the facial "
    "action units that are active."
)


@register_task
class FER(FreeTextTask):
    """Facial expression caption (peak frame only); the answer is `labels.au_caption`.

    Parsing: the stripped generation; empty → `None`. Scored by `TokenF1` (token F1 and exact
    match against the caption).
    """

    name = "fer"
    frames = "peak"
    label_field = "au_caption"

    def __init__(self, template: str = FER_TEMPLATE, reward_weights: dict[str, float] | None = None) -> None:
        super().__init__(template, reward_weights)
