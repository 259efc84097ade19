"""`AMTRecord`: every label known for one utterance or clip, plus its media."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_args

import numpy as np

from emoverse.data.audio import AUDIO_KEY, check_wave

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
"""The seven MELD / ECF 2.0 emotion labels, in the order used for metrics."""

Source = Literal["mosei", "meld", "ecf", "demo"]
SOURCES: tuple[str, ...] = get_args(Source)
SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The splits stored in shards; an in-memory record may also be "predict" (`module.analyze`)."""
FRAME_MODES: tuple[str, ...] = ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr")
"""8-bit PIL modes that convert to RGB without loss of meaning; 16-bit and float images are rejected."""
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
        audio: the clip's audio: a decoded waveform (1-D float32 in [-1, 1], 16 kHz mono, at most 30 s;
            `emoverse.data.audio`) or its FLAC bytes; None: no audio. Not compared by `==`.
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
    audio: np.ndarray | bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"record id {self.id!r}: expected a non-empty string")
        if "." in self.id or "/" in self.id:
            raise ValueError(f"record id {self.id!r}: '.' and '/' are not allowed (it is the shard key)")
        where = f"record {self.id}"
        if self.source not in SOURCES:
            raise ValueError(f"{where}: source={self.source!r}, expected one of {SOURCES}")
        if self.split not in (*SPLITS, "predict"):
            raise ValueError(f"{where}: split={self.split!r}, expected one of {SPLITS}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"{where}: text={self.text!r}, expected the utterance as a non-empty string")
        for name in ("speaker", "dialogue_id"):
            _check_optional_str(where, name, getattr(self, name))
        _check_turn(where, "turn", self.turn, optional=True)
        for k, u in enumerate(self.context):
            if not isinstance(u, Utterance):
                raise ValueError(f"{where}: context[{k}] is {type(u).__name__}, expected an Utterance")
            _check_turn(where, f"context[{k}].turn", u.turn)
            _check_optional_str(where, f"context[{k}].speaker", u.speaker)
            _check_optional_str(where, f"context[{k}].text", u.text)
            if u.emotion is not None and u.emotion not in EMOTIONS:
                raise ValueError(f"{where}: context[{k}].emotion={u.emotion!r}, expected one of {EMOTIONS}")
        self._check_labels(where)
        if self.peak_frame is not None:
            if isinstance(self.peak_frame, bool) or not isinstance(self.peak_frame, int):
                raise ValueError(f"{where}: peak_frame={self.peak_frame!r}, expected an int index into frames")
            if self.frames and not 0 <= self.peak_frame < len(self.frames):
                raise ValueError(f"{where}: peak_frame={self.peak_frame} outside its {len(self.frames)} frames")
        for k, frame in enumerate(self.frames):
            mode = getattr(frame, "mode", None)
            if mode is not None and mode not in FRAME_MODES:
                raise ValueError(f"{where} frame {k}: image mode {mode!r}; expected an 8-bit image, one of {FRAME_MODES} "
                                 "(convert 16-bit or float images to 8-bit RGB yourself, with your scaling)")
            if mode is None and not isinstance(frame, bytes):
                raise ValueError(f"{where} frame {k}: {type(frame).__name__}; expected a PIL image or JPEG bytes")
        if isinstance(self.audio, (bytes, bytearray)):
            if self.audio[:4] != b"fLaC":
                raise ValueError(f"{where}: audio is {len(self.audio)} bytes that are not FLAC (no 'fLaC' marker); "
                                 "expected FLAC bytes (emoverse.data.audio.encode_audio) or a float32 waveform")
        elif self.audio is not None:
            check_wave(self.audio, f"{where}")

    def _check_labels(self, where: str) -> None:
        labels = self.labels
        if not isinstance(labels, AMTLabels):
            raise ValueError(f"{where}: labels is {type(labels).__name__}, expected AMTLabels")
        if labels.emotion is not None and labels.emotion not in EMOTIONS:
            raise ValueError(f"{where}: labels.emotion={labels.emotion!r}, expected one of {EMOTIONS}")
        s = labels.sentiment
        if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s)
                              or not -3.0 <= s <= 3.0):
            raise ValueError(f"{where}: labels.sentiment={s!r}, expected a float in [-3, 3]")
        _check_optional_str(where, "labels.au_caption", labels.au_caption)
        _check_optional_str(where, "labels.reason", labels.reason)
        if labels.cause_pairs is not None:
            if not isinstance(labels.cause_pairs, (list, tuple)):
                raise ValueError(f"{where}: labels.cause_pairs={labels.cause_pairs!r}, expected a list of "
                                 "(emotion_turn, cause_turn, emotion)")
            for k, pair in enumerate(labels.cause_pairs):
                ok = (isinstance(pair, (list, tuple)) and len(pair) == 3 and pair[2] in EMOTIONS
                      and all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in pair[:2]))
                if not ok:
                    raise ValueError(f"{where}: labels.cause_pairs[{k}]={pair!r}, expected (emotion_turn, cause_turn, "
                                     f"emotion) with 1-based int turns and an emotion from {EMOTIONS}")

    def metadata(self) -> dict[str, Any]:
        """Everything but the frames and the audio, as JSON-ready data (the shard's `.json` member):
        `num_frames` counts the frames, and `"audio": "audio.flac"` (only when the record has audio)
        names the audio member, so a record without audio has the same JSON as before audio existed."""
        meta = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("frames", "audio")}
        meta["num_frames"] = len(self.frames)
        if self.audio is not None:
            meta["audio"] = AUDIO_KEY
        return meta

    def to_json(self) -> str:
        return json.dumps(self.metadata(), ensure_ascii=False)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], frames: list[Any] | None = None, where: str = "",
                      audio: np.ndarray | bytes | None = None) -> AMTRecord:
        """Rebuild a record from its `.json` member (and its decoded frames and audio, when read);
        errors name `where` (file and key) and the field."""
        where = where or "record"
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: metadata is {type(meta).__name__}, expected a JSON object")
        meta = dict(meta)
        meta.pop("num_frames", None)
        flag = meta.pop("audio", None)
        if flag not in (None, AUDIO_KEY):
            raise ValueError(f"{where}: audio={flag!r} in its metadata; expected {AUDIO_KEY!r} or no key")
        try:
            labels = meta.pop("labels", {}) or {}
            if not isinstance(labels, dict):
                raise TypeError(f"labels is {type(labels).__name__}, expected an object")
            labels = dict(labels)
            if isinstance(labels.get("cause_pairs"), list):
                labels["cause_pairs"] = [tuple(p) if isinstance(p, list) else p for p in labels["cause_pairs"]]
            meta["labels"] = AMTLabels(**labels)
            context = meta.get("context") or []
            if not isinstance(context, list) or not all(isinstance(u, dict) for u in context):
                raise TypeError("context must be a list of objects {turn, speaker, text, emotion}")
            meta["context"] = [Utterance(**u) for u in context]
        except TypeError as err:  # unknown or missing field
            raise ValueError(f"{where}: bad AMT record metadata ({err}); record fields are "
                             f"{list(cls.__dataclass_fields__)}, label fields {list(LABEL_FIELDS)}") from err
        try:
            return cls(**meta, frames=list(frames or []), audio=audio)
        except TypeError as err:
            raise ValueError(f"{where}: bad AMT record metadata ({err}); fields are {list(cls.__dataclass_fields__)}") from err
        except ValueError as err:  # the field checks of __post_init__ ("record X: ..."), with the file instead
            message, own = str(err), f"record {meta.get('id')}"
            raise ValueError(f"{where}{message[len(own):]}" if message.startswith(own) else f"{where}: {message}") from None


def has_audio(meta: dict[str, Any]) -> bool:
    """Whether a record's `.json` metadata says the record has an audio member."""
    return meta.get("audio") == AUDIO_KEY


def _plain(value: Any) -> Any:
    """`dataclasses.asdict`'s conversion of one field value (dataclasses to dicts, lists and tuples copied)."""
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _check_optional_str(where: str, name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {name}={value!r}, expected a string or null")


def _check_turn(where: str, name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name}={value!r}, expected a 1-based int")
