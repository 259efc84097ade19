"""`Task`: what one affective task asks of a record and how its answer is read back."""

from __future__ import annotations

import math
import random
import string
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from torchmetrics import Metric

from emoverse.data.record import AMTRecord

FrameChoice = Literal["clip", "peak"]
"""Which frames a task's prompt shows (`Task.frames`, read by `emoverse.data.dataset.select_frames`)."""


class Task(ABC):
    """One affective task. Subclasses set `name` and implement `has_label`, `query`, `response`, `parse`,
    `target`, `new_metric` and `update_metric`.

    Evaluation runs `parse` on each generation, then
    `update_metric(metric, predictions, [task.target(r) for r in records])` on a metric from
    `new_metric()`; `metric.compute()` gives flat `{name: Tensor}` scores including `unparsed`.

    Reinforcement (`Stage(objective="grpo")`) scores each sampled answer with `reward`, through the
    same `parse` and `target` evaluation uses: a task that implements `reward_terms` has a reward.

    Attributes:
        name: registry name ("msa", "mer", "fer", "eri", "ecpe").
        frames: which frames the prompt shows: "clip" (up to N frames sampled over the clip) or "peak"
            (the peak frame).
        media: what the prompt shows besides its text (`MEDIA`): "frames" (the frames as still images),
            "video" (the same frames as one video, for backbones with a video processor), "audio" (the
            speaker's audio track); default ("frames",), the paper's. Set per task in YAML
            (`task_args: {mer: {media: [frames, audio]}}`, through `get_task`).
        max_new_tokens: generation budget at evaluation.
        default_reward_weights: the weight of each reward term ("format": the answer parses, plus the
            task's `reward_terms`); `reward_weights` (a constructor argument of the built-in tasks)
            overrides some of them.
        length_penalty: subtracted from the reward per word of the answer (default 0: off), so an
            objective cannot gain by padding answers; set per task in YAML
            (`task_args: {eri: {length_penalty: 0.01}}`, through `get_task`).
    """

    name: ClassVar[str]
    frames: ClassVar[FrameChoice] = "clip"
    media: tuple[str, ...] = ("frames",)
    max_new_tokens: int = 16
    default_reward_weights: ClassVar[Mapping[str, float]] = {"format": 0.1, "correct": 1.0}
    reward_weights: dict[str, float] | None = None
    length_penalty: float = 0.0

    @abstractmethod
    def has_label(self, record: AMTRecord) -> bool:
        """Whether `record` carries this task's label (the sampler pairs only such records)."""

    @abstractmethod
    def query(self, record: AMTRecord, rng: random.Random) -> str:
        """The prompt for `record` (no label needed); `rng` picks among prompt variants, if any."""

    @abstractmethod
    def response(self, record: AMTRecord) -> str:
        """The answer the model is trained to give for `record` (needs its label)."""

    def build(self, record: AMTRecord, rng: random.Random) -> tuple[str, str]:
        """(query, response) for a labelled `record`."""
        self.check_label(record)
        return self.query(record, rng), self.response(record)

    @abstractmethod
    def parse(self, text: str, record: AMTRecord | None = None) -> Any:
        """Read a prediction from generated `text`; `None` when it cannot be parsed."""

    @abstractmethod
    def target(self, record: AMTRecord) -> Any:
        """The JSON-able gold answer of `record` that `update_metric` scores predictions against.

        Raises:
            ValueError: `record` has no label for this task.
        """

    @abstractmethod
    def new_metric(self) -> Metric:
        """A fresh torchmetrics `Metric` whose `compute()` returns `dict[str, Tensor]`."""

    @abstractmethod
    def update_metric(self, metric: Metric, predictions: Sequence[Any], targets: Sequence[Any]) -> None:
        """Add `parse` outputs and `target` values to `metric` (from `new_metric`).

        `None` predictions (unparsable answers) count as wrong and in the metric's `unparsed`.

        Raises:
            ValueError: `predictions` and `targets` differ in length.
        """

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The closed set of answers this task's responses come from (e.g. "Positive.", "Negative."), which
        likelihood scoring ranks (`emoverse.evaluation.choose`); None: an open answer (only generation reads it)."""
        return None

    def parse_offline(self, text: str, target: Any) -> Any:
        """Parse `text` when only the JSON gold `target` is known (offline scoring, no record).

        The default ignores `target`; tasks whose parser uses the record override it.
        """
        return self.parse(text)

    # reinforcement -----------------------------------------------------------------------------

    def reward_terms(self, prediction: Any, target: Any) -> dict[str, float]:
        """The correctness terms of a parsed answer against the gold `target` (each in [0, 1]), by name;
        `reward` weighs them. Tasks without it have no reward (a GRPO stage refuses them)."""
        raise NotImplementedError(f"task {self.name!r} has no reward: implement {type(self).__name__}.reward_terms")

    @property
    def has_reward(self) -> bool:
        """Whether this task implements `reward_terms` (what a GRPO stage needs)."""
        return type(self).reward_terms is not Task.reward_terms

    @property
    def weights(self) -> dict[str, float]:
        """The reward weights in use: `default_reward_weights` updated by `reward_weights`."""
        return {**self.default_reward_weights, **(self.reward_weights or {})}

    def reward(self, text: str, record: AMTRecord) -> float:
        """The reward of answer `text` to `record`: the sum of `reward_breakdown`'s terms. 0 when it does not
        parse (`parse` is None), else `weights["format"]` plus each correctness term (`reward_terms(parse(text),
        target(record))`) times its weight, less the length penalty; evaluation reads the same parse and
        target, so what is reinforced is what is reported.

        Raises:
            ValueError: `record` has no label for this task.
        """
        return sum(self.reward_breakdown(text, record).values())

    def reward_breakdown(self, text: str, record: AMTRecord) -> dict[str, float]:
        """The weighted terms of `reward` by name: "format", each of `reward_terms`' terms (0 when the answer
        does not parse) and "length" (minus `length_penalty` per word; present when the penalty is on).
        Objectives log each term per task, so a term the policy games shows in the report.

        Raises:
            ValueError: `record` has no label for this task.
        """
        target = self.target(record)
        prediction = self.parse(text, record)
        weights = self.weights
        terms = {k: 0.0 for k in weights}
        if prediction is not None:
            terms["format"] = weights["format"]
            terms.update({k: weights[k] * v for k, v in self.reward_terms(prediction, target).items()})
        if self.length_penalty:
            terms["length"] = -self.length_penalty * len(text.split())
        return terms

    def check_label(self, record: AMTRecord) -> None:
        """Raise `ValueError` unless `record` carries this task's label (`has_label`)."""
        if not self.has_label(record):
            raise ValueError(f"record {record.id!r} has no label for task {self.name!r}; pair it only with tasks whose has_label() is true")


MEDIA: tuple[str, ...] = ("frames", "video", "audio")


def check_media(media: Sequence[str], owner: str) -> tuple[str, ...]:
    """Validate a task's `media`: names from `MEDIA`, no repeats, "frames" and "video" not both.

    Returns:
        `media` as a tuple in `MEDIA` order.
    """
    if isinstance(media, str) or not isinstance(media, Sequence):
        raise ValueError(f"{owner}.media={media!r}: expected a list of {MEDIA} (which frames a task shows is "
                         "its `frames` attribute, 'clip' or 'peak')")
    unknown = [m for m in media if m not in MEDIA]
    if unknown or len(set(media)) != len(media):
        raise ValueError(f"{owner}.media={list(media)}: expected distinct names from {MEDIA}")
    if "frames" in media and "video" in media:
        raise ValueError(f"{owner}.media={list(media)}: 'frames' (still images) and 'video' show the same frames; "
                         "choose one")
    return tuple(m for m in MEDIA if m in media)


MEDIA_INPUTS: dict[str, str] = {"frames": "image", "video": "video", "audio": "audio"}
"""The backbone input (`BackboneProcessor.modalities`) each task medium needs."""


def default_media(accepts: frozenset[str]) -> tuple[str, ...]:
    """What a task shows on a backbone taking `accepts` unless its config names `media`: the frames as still
    images where it sees, the audio where it hears (an audio-only backbone: the audio alone)."""
    return tuple(m for m in ("frames", "audio") if MEDIA_INPUTS[m] in accepts)


def check_media_support(tasks: Mapping[str, Task], accepts: frozenset[str], backbone: str) -> None:
    """Raise a one-line `ValueError` when a task shows media the backbone cannot take (checked at start, not
    mid-run): e.g. audio on a backbone without an audio encoder.

    Args:
        tasks: the run's tasks by name.
        accepts: the backbone's inputs (`BackboneProcessor.modalities`: "image", "video", "audio").
        backbone: its name, for the message.
    """
    for name, task in tasks.items():
        missing = [m for m in task.media if MEDIA_INPUTS[m] not in accepts]
        if missing:
            can = [m for m, need in MEDIA_INPUTS.items() if need in accepts and not (m == "video" and "frames" in task.media)]
            raise ValueError(f"task {name!r} shows {missing}, which backbone {backbone} cannot take (it takes "
                             f"{sorted(accepts)}); set task_args: {{{name}: {{media: [...]}}}} to some of {can}, "
                             "or choose a backbone that takes them (docs/audio.md)")


def check_length_penalty(penalty: float, owner: str) -> float:
    """Validate a task's `length_penalty`: a finite float >= 0 (per word of the answer)."""
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty) or penalty < 0:
        raise ValueError(f"{owner}: length_penalty={penalty!r}, expected a finite float >= 0 (subtracted per word)")
    return float(penalty)


def check_reward_weights(weights: Mapping[str, float] | None, owner: str,
                         defaults: Mapping[str, float]) -> dict[str, float] | None:
    """Validate `reward_weights`: known terms (`defaults`' keys), finite and >= 0.

    Returns:
        `weights` as a dict (None stays None).
    """
    if weights is None:
        return None
    if not isinstance(weights, Mapping):
        raise ValueError(f"{owner}: reward_weights={weights!r}, expected a mapping term -> weight")
    unknown = sorted(set(weights) - set(defaults))
    if unknown:
        raise ValueError(f"{owner}: reward_weights has unknown term(s) {unknown}; expected some of {sorted(defaults)}")
    for term, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{owner}: reward_weights[{term!r}]={w!r}, expected a finite float >= 0")
    return {k: float(v) for k, v in weights.items()}


def check_template(template: str, owner: str, allowed: frozenset[str], required: frozenset[str] = frozenset()) -> str:
    """Validate a prompt template's `{placeholders}`.

    Args:
        template: a `str.format` template.
        owner: `"<Task>.template"`, for the error message.
        allowed: placeholders the task fills.
        required: placeholders that must appear.

    Returns:
        `template`, unchanged.
    """
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"{owner}: not a valid str.format template ({err})") from None
    if not fields <= allowed or not required <= fields:
        raise ValueError(f"{owner}: placeholders {sorted(fields)}; expected {sorted(required)} and optionally {sorted(allowed - required)}")
    return template
