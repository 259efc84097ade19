"""What a source reader yields: candidate records with their clip, or rejections with a reason.

Readers never drop a row silently: every row of a source file becomes a `Candidate` or a
`Rejected` (with one of `DROP_REASONS`), and `emoverse amt build` counts both in its manifest.
A file that is not the expected format (missing folder, other columns, unparsable line) is an
error naming the file, the line and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emoverse.data.record import AMTRecord

DROP_REASONS: dict[str, str] = {
    "empty_text": "the utterance text is empty",
    "label_out_of_range": "the only label is outside its range (sentiment not in [-3, 3], emotion not one of the seven)",
    "no_split": "the video is in none of the standard folds",
    "segment_not_found": "no segment of the video starts within the tolerance of the clip's start time",
    "duplicate_id": "a record with the same id and the same labels came earlier (the repeat is dropped)",
    "conflicting_labels": "the same id appears with different labels or splits (every copy is dropped)",
    "missing_media": "the clip's video file does not exist",
    "unreadable_media": "the clip's video cannot be decoded or has no frame in the segment",
}
"""Why a whole record is dropped."""

LABEL_REMOVALS: dict[str, str] = {
    "no_openface": "FER: the clip has no OpenFace output (its CSV does not exist, or the AU extractor returned none)",
    "no_face": "FER: the clip's OpenFace output has no usable face row (every row has success 0, is below "
               "min_confidence, or lies outside the clip's segment)",
    "text_only": "the clip's video file does not exist and require_media is false: the record is kept without frames",
    "emotion_tie": "MER from MOSEI intensities: two emotions share the highest intensity",
    "bad_cause_pair": "ECPE: a pair of the conversation points to a turn that does not exist",
    "pair_emotion_mismatch": "ECPE: a pair's emotion differs from its emotion turn's label",
    "invalid_turn_emotion": "ECPE: a turn of the conversation has an emotion outside the seven (that turn is dropped)",
}
"""Why one label of a record is removed (the record stays for its other tasks)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Clip:
    """Where a record's video is.

    Attributes:
        video: the file to decode (its existence is checked when the media are read).
        au_csv: the clip's OpenFace CSV, when the source has an OpenFace folder (it may be missing).
        start, end: the segment in seconds; None = the whole file.
        audio: a separate audio file for the clip (CMU-MOSEI's WAV_16000), in the video's clock;
            None: the video file's own audio track.
    """

    video: Path
    au_csv: Path | None = None
    start: float | None = None
    end: float | None = None
    audio: Path | None = None


@dataclass
class Candidate:
    """A record a source read, its clip (None when the source has no video folder), and where it came from."""

    record: AMTRecord
    clip: Clip | None
    origin: str
    removed: tuple[str, ...] = ()
    """Labels the reader removed, as `LABEL_REMOVALS` keys."""


@dataclass(frozen=True)
class Rejected:
    """A source row that is not a record, and why (`DROP_REASONS`)."""

    id: str
    source: str
    split: str
    reason: str
    origin: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in DROP_REASONS:
            raise ValueError(f"Rejected({self.id}): reason {self.reason!r}, expected one of {sorted(DROP_REASONS)}")


def read_table(path: Path, required: Iterable[str], what: str) -> pd.DataFrame:
    """Read a CSV as strings (quoted fields with commas, UTF-8), checking its columns.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a required column is missing; the message lists the file's columns and the expected ones.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable UTF-8 CSV ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; {what} needs {list(required)}, "
                         f"the file has {list(table.columns)}")
    return table


def need_dir(path: str | Path, what: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: folder {folder} not found")
    return folder
