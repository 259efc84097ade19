"""CMU-MOSEI (Zadeh et al., ACL 2018): segment sentiment in [-3, 3] with transcripts.

The label table is the common CSV form (MMSA's `label.csv`): `video_id, clip_id, text, label`
and optionally `mode` (or `split`): train / valid / test. Splits come from the CMU-MultimodalSDK
standard folds when `folds` is given (`cmu_mosei_std_folds.json`, or a folder with
`{train,valid,test}_video_ids.txt`); a video in no fold is dropped (`no_split`), a `mode` that
disagrees with the fold drops the segment (`conflicting_labels`).

Segments are located by id and time:
- an integer `clip_id` (MMSA) is a clip file `{videos}/{video_id}/{clip_id}.mp4`, its OpenFace CSV
  `{openface}/{video_id}/{clip_id}.csv`;
- a time-like `clip_id` (`82_7645` = starts at 82.7645 s) is a segment of the full video
  `{videos}/{video_id}.mp4`; its end (and exact start) come from the `segments` table (`file, start,
  end`, e.g. s3prl's `CMU_MOSEI_Labels.csv`): the segment of that video whose start is nearest,
  within `tolerance` seconds. The OpenFace CSV of the full video, `{openface}/{video_id}.csv`, is
  read within the segment's time window.

With `emotions_as_mer`, the six emotion intensities (columns happy, sad, anger, surprise, disgust,
fear, in [0, 3]) label MER: all zero → neutral; otherwise the strongest (happy → joy, sad →
sadness, the rest by name); a tie for the strongest removes the MER label (`emotion_tie`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoverse.amt.sources.base import Candidate, Clip, Rejected, read_table
from emoverse.data.record import AMTLabels, AMTRecord

INTENSITIES: dict[str, str] = {"happy": "joy", "sad": "sadness", "anger": "anger", "surprise": "surprise",
                               "disgust": "disgust", "fear": "fear"}
SPLIT_NAMES: dict[str, str] = {"train": "train", "valid": "val", "val": "val", "dev": "val", "test": "test"}
_TIME_ID = re.compile(r"^\d+_\d+$")


@dataclass
class MOSEISource:
    """CMU-MOSEI labels, folds, segment times and, optionally, videos and OpenFace output.

    Attributes:
        labels: the label CSV (`video_id, clip_id, text, label[, mode]`).
        folds: the standard folds (JSON or folder of `*_video_ids.txt`); None: the table's `mode` column.
        segments: a `file, start, end` table locating time-like clip ids; None: integer clip ids only.
        videos: folder of the videos (see the module docstring); None: no media.
        openface: folder of OpenFace CSVs laid out like `videos`; None: no FER labels.
        audio: folder of audio files laid out like `videos`, `.wav` instead of `.mp4` (the SDK's
            `Raw/Audio/Full/WAV_16000/{video_id}.wav`, or MMSA-style `{video_id}/{clip_id}.wav` segments);
            None: the videos' own audio tracks.
        emotions_as_mer: label MER from the six emotion intensities (see the module docstring).
        tolerance: seconds between a time-like clip id and its segment's start.
    """

    labels: str
    folds: str | None = None
    segments: str | None = None
    videos: str | None = None
    openface: str | None = None
    audio: str | None = None
    emotions_as_mer: bool = False
    tolerance: float = 1.0

    name = "mosei"

    def read(self) -> Iterator[Candidate | Rejected]:
        """Every label-table row as a `Candidate` or a `Rejected`."""
        path = Path(self.labels)
        table = read_table(path, ("video_id", "clip_id", "text", "label"), "a CMU-MOSEI label table")
        mode_col = "mode" if "mode" in table.columns else "split" if "split" in table.columns else None
        if self.folds is None and mode_col is None:
            raise ValueError(f"{path}: no 'mode'/'split' column and no folds given; "
                             "set MOSEISource.folds to the standard folds (cmu_mosei_std_folds.json)")
        folds = read_folds(Path(self.folds)) if self.folds else None
        segments = self._segments()
        if self.emotions_as_mer:
            missing = [c for c in INTENSITIES if c not in table.columns]
            if missing:
                raise ValueError(f"{path}: emotions_as_mer needs the intensity columns {list(INTENSITIES)}; missing {missing}")
        for i, row in enumerate(table.to_dict("records")):
            yield self._row(row, f"{path} line {i + 2}", mode_col, folds, segments)

    def _segments(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.segments is None:
            return {}
        table = read_table(Path(self.segments), ("file", "start", "end"), "a CMU-MOSEI segment table")
        out = {}
        for video, group in table.groupby("file", sort=False):
            out[str(video)] = (group["start"].astype(float).to_numpy(), group["end"].astype(float).to_numpy())
        return out

    def _row(self, row: dict[str, str], origin: str, mode_col: str | None, folds: dict[str, str] | None,
             segments: dict[str, tuple[np.ndarray, np.ndarray]]) -> Candidate | Rejected:
        video, clip_id = row["video_id"].strip(), row["clip_id"].strip()
        rid = f"mosei_{video}_{clip_id}".replace(".", "_").replace("/", "_")
        mode = SPLIT_NAMES.get(row[mode_col].strip().lower()) if mode_col else None
        if mode_col and mode is None:
            raise ValueError(f"{origin}: {mode_col}={row[mode_col]!r}, expected one of {sorted(SPLIT_NAMES)}")
        split = folds.get(video) if folds is not None else mode
        if split is None:
            return Rejected(rid, self.name, "none", "no_split", origin, f"video {video} is in no standard fold")
        if mode is not None and mode != split:
            return Rejected(rid, self.name, split, "conflicting_labels", origin, f"{mode_col}={mode} but the fold says {split}")
        text = row["text"].strip()
        if not text:
            return Rejected(rid, self.name, split, "empty_text", origin)
        try:
            sentiment = float(row["label"])
        except ValueError:
            return Rejected(rid, self.name, split, "label_out_of_range", origin, f"label={row['label']!r}")
        if not (math.isfinite(sentiment) and -3.0 <= sentiment <= 3.0):
            return Rejected(rid, self.name, split, "label_out_of_range", origin, f"label={sentiment}")
        emotion, removed = self._emotion(row, origin) if self.emotions_as_mer else (None, ())
        record = AMTRecord(id=rid, source="mosei", split=split, text=text,
                           labels=AMTLabels(sentiment=sentiment, emotion=emotion))
        clip = None
        if self.videos is not None:
            clip = self._clip(video, clip_id, segments)
            if clip is None:
                return Rejected(rid, self.name, split, "segment_not_found", origin,
                                f"no segment of {video} starts within {self.tolerance} s of {clip_id}")
        return Candidate(record, clip, origin, removed)

    def _emotion(self, row: dict[str, str], origin: str) -> tuple[str | None, tuple[str, ...]]:
        try:
            values = np.array([float(row[c]) for c in INTENSITIES])
        except ValueError as err:
            raise ValueError(f"{origin}: emotion intensities must be numbers ({err})") from err
        if values.max() <= 0:
            return "neutral", ()
        top = np.flatnonzero(values == values.max())
        if len(top) > 1:
            return None, ("emotion_tie",)
        return list(INTENSITIES.values())[int(top[0])], ()

    def _clip(self, video: str, clip_id: str, segments: dict[str, tuple[np.ndarray, np.ndarray]]) -> Clip | None:
        root = Path(self.videos)  # type: ignore[arg-type]
        openface = Path(self.openface) if self.openface else None
        audio = Path(self.audio) if self.audio else None
        if not _TIME_ID.match(clip_id):
            return Clip(video=root / video / f"{clip_id}.mp4",
                        au_csv=openface / video / f"{clip_id}.csv" if openface else None,
                        audio=audio / video / f"{clip_id}.wav" if audio else None)
        start = float(clip_id.replace("_", "."))
        if video not in segments:
            return None
        starts, ends = segments[video]
        k = int(np.argmin(np.abs(starts - start)))
        if abs(starts[k] - start) > self.tolerance:
            return None
        return Clip(video=root / f"{video}.mp4", au_csv=openface / f"{video}.csv" if openface else None,
                    start=float(starts[k]), end=float(ends[k]), audio=audio / f"{video}.wav" if audio else None)


def read_folds(path: Path) -> dict[str, str]:
    """video id -> split ("train"/"val"/"test") from the SDK's standard folds."""
    if path.is_dir():
        lists = {}
        for fold in ("train", "valid", "test"):
            f = path / f"{fold}_video_ids.txt"
            if not f.is_file():
                raise FileNotFoundError(f"CMU-MOSEI folds: {f} not found (expected train/valid/test_video_ids.txt)")
            lists[fold] = [line.strip() for line in f.read_text().splitlines() if line.strip()]
    elif path.is_file():
        lists = json.loads(path.read_text())
        if not isinstance(lists, dict) or set(lists) != {"train", "valid", "test"}:
            raise ValueError(f"{path}: expected a JSON object with the lists 'train', 'valid', 'test'")
    else:
        raise FileNotFoundError(f"CMU-MOSEI folds: {path} not found")
    out: dict[str, str] = {}
    for fold, videos in lists.items():
        for v in videos:
            if v in out:
                raise ValueError(f"{path}: video {v} is in two folds ({out[v]} and {SPLIT_NAMES[fold]})")
            out[str(v)] = SPLIT_NAMES[fold]
    return out
