"""`AMTRecord`: every label known for one utterance or clip, plus its media."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
"""The seven MELD / ECF 2.0 emotion labels, in the order used for metrics."""

Source = Literal["mosei", "meld", "ecf", "demo"]
LABEL_FIELDS: tuple[str, ...] = ("sentiment", "emotion", "au_caption", "reason", "cause_pairs")


@dataclass
class Utterance:
    """One earlier turn of a dialogue (context for ECPE). `turn` is 1-based, as in ECF 2.0."""

    turn: int
    speaker: str
    text: str
    emotion: str | None = None


@dataclass
class AMTLabels:
    """The labels of one record; `None` means "not annotated for this task".

    Attributes:
        sentiment: CMU-MOSEI style score in [-3, 3].
        emotion: one of `EMOTIONS`.
        au_caption: facial-expression caption built from the peak frame's action units.
        reason: free-text reason for the emotion (ERI).
        cause_pairs: ECPE pairs whose emotion utterance is this record's turn, as
            `(emotion_turn, cause_turn, emotion)`; an empty list means "annotated, no cause".
    """

    sentiment: float | None = None
    emotion: str | None = None
    au_caption: str | None = None
    reason: str | None = None
    cause_pairs: list[tuple[int, int, str]] | None = None


@dataclass
class AMTRecord:
    """One AMT record: an utterance or clip with the labels of up to five tasks.

    A task turns a record into a (query, response) pair only when the sampler picks the pair,
    so one record serves different tasks in different stages.

    Attributes:
        id: unique record id (no dots: it is the webdataset key).
        source: the dataset the record comes from.
        split: "train", "val" or "test".
        text: the utterance (transcript).
        labels: the task labels.
        speaker: who speaks, when known.
        dialogue_id: conversation id (MELD dialogue / ECF conversation), when the record is a turn.
        turn: 1-based position of this utterance in its dialogue.
        context: other turns of the dialogue (ECPE): the preceding ones, or the whole conversation (ECF builds).
        frames: decoded RGB frames (PIL images) or encoded JPEG bytes, in time order.
        peak_frame: index into `frames` of the most expressive frame (FER), when known.
    """

    id: str
    source: Source
    split: str
    text: str
    labels: AMTLabels = field(default_factory=AMTLabels)
    speaker: str | None = None
    dialogue_id: str | None = None
    turn: int | None = None
    context: list[Utterance] = field(default_factory=list)
    frames: list[Any] = field(default_factory=list, repr=False)
    peak_frame: int | None = None

    def __post_init__(self) -> None:
        if "." in self.id or "/" in self.id:
            raise ValueError(f"record id {self.id!r}: '.' and '/' are not allowed (it is the shard key)")
        if self.labels.emotion is not None and self.labels.emotion not in EMOTIONS:
            raise ValueError(f"record {self.id}: labels.emotion={self.labels.emotion!r}, expected one of {EMOTIONS}")
        s = self.labels.sentiment
        if s is not None and not -3.0 <= s <= 3.0:
            raise ValueError(f"record {self.id}: labels.sentiment={s}, expected a float in [-3, 3]")
        if self.frames and self.peak_frame is not None and not 0 <= self.peak_frame < len(self.frames):
            raise ValueError(f"record {self.id}: peak_frame={self.peak_frame} outside its {len(self.frames)} frames")

    def metadata(self) -> dict[str, Any]:
        """Everything but the frames, as JSON-ready data (the shard's `.json` member)."""
        meta = asdict(self)
        meta.pop("frames")
        meta["num_frames"] = len(self.frames)
        return meta

    def to_json(self) -> str:
        return json.dumps(self.metadata(), ensure_ascii=False)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], frames: list[Any] | None = None, where: str = "") -> AMTRecord:
        """Rebuild a record from its `.json` member; errors name `where` (file and key) and the field."""
        meta = dict(meta)
        meta.pop("num_frames", None)
        try:
            labels = dict(meta.pop("labels", {}) or {})
            if labels.get("cause_pairs") is not None:
                labels["cause_pairs"] = [tuple(p) for p in labels["cause_pairs"]]
            meta["labels"] = AMTLabels(**labels)
            meta["context"] = [Utterance(**u) for u in meta.get("context", [])]
            return cls(**meta, frames=list(frames or []))
        except TypeError as err:  # unknown or missing field
            raise ValueError(f"{where or 'record'}: bad AMT record metadata ({err}); fields are {list(cls.__dataclass_fields__)}") from err
