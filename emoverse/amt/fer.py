"""FER labels per clip: the peak frame from action-unit rows (Eq. 1-2) and its caption (Eq. 3).

The rows come from an `AUExtractor`. `OpenFaceCSVs` (the default) reads the CSV that OpenFace 2.x
`FeatureExtraction` (one face) or `FaceLandmarkVidMulti` (several faces) wrote for the clip; any
other detector can stand in by subclassing `AUExtractor` and returning a table with the same
columns (`frame, face_id, timestamp, confidence, success, AUxx_r..., AUxx_c...`; intensities on
OpenFace's 0-5 scale, presences 0/1). See docs/amt.md for running OpenFace.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import pandas as pd

from emoverse.amt.facs import AUTable, au_caption
from emoverse.amt.peak import PeakFrame, check_openface_table, peak_of, read_openface_csv
from emoverse.amt.sources.base import Clip


class AUExtractor(ABC):
    """Produces OpenFace-shaped action-unit rows for a clip."""

    @abstractmethod
    def extract(self, clip: Clip) -> pd.DataFrame | None:
        """The clip's AU rows (OpenFace columns; `timestamp` in the video file's clock), or None when the
        detector has no output for it (counted as `no_face`)."""


class OpenFaceCSVs(AUExtractor):
    """Reads `clip.au_csv`, the CSV OpenFace wrote for the clip; None when the file does not exist."""

    def extract(self, clip: Clip) -> pd.DataFrame | None:
        if clip.au_csv is None or not clip.au_csv.is_file():
            return None
        return read_openface_csv(clip.au_csv)


@dataclass
class FERLabel:
    """A clip's peak frame (its time in the video) and, when the record has an emotion, the caption."""

    peak: PeakFrame
    time: float
    caption: str | None


def fer_label(clip: Clip, emotion: str | None, extractor: AUExtractor, table: AUTable,
              min_confidence: float = 0.0) -> FERLabel | None:
    """The peak frame of the clip (within its segment) and the caption for `emotion`; None when no face is usable.

    Raises:
        ValueError: the AU rows are malformed or lack a `timestamp` (the message names the CSV).
    """
    return fer_result(clip, emotion, extractor, table, min_confidence)[0]


def fer_result(clip: Clip, emotion: str | None, extractor: AUExtractor, table: AUTable,
               min_confidence: float = 0.0) -> tuple[FERLabel | None, str | None]:
    """`fer_label` and, when it is None, why: "no_openface" (the extractor has no output for the clip, e.g.
    no CSV) or "no_face" (output whose every row failed tracking, is below `min_confidence` or is outside
    the segment)."""
    rows = extractor.extract(clip)
    if rows is None:
        return None, "no_openface"
    where = str(clip.au_csv or clip.video)
    rows = check_openface_table(rows, where)
    if "timestamp" not in rows.columns:
        raise ValueError(f"{where}: needs OpenFace's 'timestamp' column to find the peak frame in the video")
    try:
        peak = peak_of(rows, min_confidence, where, start=clip.start, end=clip.end)
    except ValueError:  # no usable row: every frame failed tracking or none is in the segment
        return None, "no_face"
    caption = au_caption(peak.active_aus, emotion, table) if emotion is not None else None
    return FERLabel(peak=peak, time=float(peak.timestamp), caption=caption), None
