"""FER peak frames from OpenFace 2.x action-unit tables (the paper's Eq. 1-2), vectorised with pandas.

S_f = Σ_i AU_i(f) over the AU intensities (`AUxx_r`) of frame f; the peak is the argmax. With
several faces (OpenFace's `face_id`, MELD scenes), each face's best frame is found and the face
with the highest score wins (ties: the earlier row, the face seen first). Rows OpenFace marks as
failed (`success` = 0) or below `min_confidence` are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("frame", "face_id", "confidence", "success")


@dataclass
class PeakFrame:
    """The most expressive frame of a clip.

    Attributes:
        frame: OpenFace's frame number (1-based, as in the CSV).
        face_id: the face whose expression peaks there.
        score: S_f, the sum of its AU intensities.
        active_aus: AU numbers OpenFace marks present (`AUxx_c` = 1) in that row.
        skipped: rows skipped as failed or low-confidence tracking, by reason.
        timestamp: OpenFace's `timestamp` of the frame in seconds, when the table has one.
        face_scores: each face's best S_f.
    """

    frame: int
    face_id: int
    score: float
    active_aus: list[int]
    skipped: dict[str, int] = field(default_factory=dict)
    timestamp: float | None = None
    face_scores: dict[int, float] = field(default_factory=dict)


def au_columns(columns: list[str]) -> tuple[list[str], list[str]]:
    """The intensity (`AUxx_r`) and presence (`AUxx_c`) columns of an OpenFace table."""
    intensities = [c for c in columns if c.startswith("AU") and c.endswith("_r")]
    presences = [c for c in columns if c.startswith("AU") and c.endswith("_c")]
    return intensities, presences


def check_openface_table(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate an OpenFace-shaped table and return it with numeric columns (float64).

    Raises:
        ValueError: a required column is missing, or a value is not a number (naming the CSV line).
    """
    table = table.rename(columns=lambda c: str(c).strip())
    intensities, presences = au_columns(list(table.columns))
    missing = sorted(set(REQUIRED_COLUMNS) - set(table.columns))
    if missing or not intensities:
        raise ValueError(f"{where}: not an OpenFace AU table; missing columns {missing or ['AUxx_r']} "
                         f"(expected {list(REQUIRED_COLUMNS)} and AUxx_r intensities)")
    cols = [*REQUIRED_COLUMNS, *(["timestamp"] if "timestamp" in table.columns else []), *intensities, *presences]
    numeric = table[cols].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        column = next(c for c in cols if pd.isna(numeric[c].iloc[row]))
        raise ValueError(f"{where} line {row + 2}: expected numbers in the OpenFace columns "
                         f"({column}={table[column].iloc[row]!r})")
    return numeric


def read_openface_csv(csv_path: str | Path) -> pd.DataFrame:
    """Read one OpenFace 2.x CSV (`FeatureExtraction`, or `FaceLandmarkVidMulti` with ", " separators)."""
    path = Path(csv_path)
    try:
        table = pd.read_csv(path, skipinitialspace=True, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from err
    return check_openface_table(table, str(path))


def peak_of(table: pd.DataFrame, min_confidence: float = 0.0, where: str = "OpenFace table",
            start: float | None = None, end: float | None = None) -> PeakFrame:
    """The peak frame of a validated OpenFace table (see `check_openface_table`).

    Args:
        table: one clip's rows (numeric columns).
        min_confidence: rows with a lower tracking confidence are skipped.
        where: names the table in errors.
        start, end: keep only rows with `start <= timestamp <= end` (a segment of a longer video).

    Raises:
        ValueError: no usable row.
    """
    if start is not None or end is not None:
        ts = table["timestamp"]
        table = table[(ts >= (start if start is not None else -np.inf)) & (ts <= (end if end is not None else np.inf))]
    failed = table["success"].to_numpy() != 1
    low = ~failed & (table["confidence"].to_numpy() < min_confidence)
    skipped = {"failed": int(failed.sum()), "low_confidence": int(low.sum())}
    usable = table[~failed & ~low]
    if usable.empty:
        raise ValueError(f"{where}: no usable row (skipped {skipped})")
    intensities, presences = au_columns(list(usable.columns))
    scores = pd.Series(usable[intensities].to_numpy().sum(axis=1), index=usable.index)
    faces = usable["face_id"].to_numpy().astype(np.int64)
    best_rows = scores.groupby(faces, sort=False).idxmax()  # per face: its first highest-scoring row (Eq. 1)
    face_scores = scores[best_rows.to_numpy()].to_numpy()
    winner = int(np.argmax(face_scores))  # the face seen first among equal bests (Eq. 2)
    row = usable.loc[best_rows.iloc[winner]]
    active = [int(c[2:4]) for c in presences if row[c] == 1]
    return PeakFrame(frame=int(row["frame"]), face_id=int(best_rows.index[winner]), score=float(face_scores[winner]),
                     active_aus=active, skipped=skipped,
                     timestamp=float(row["timestamp"]) if "timestamp" in usable.columns else None,
                     face_scores={int(f): float(s) for f, s in zip(best_rows.index, face_scores)})


def peak_frame(csv_path: str | Path, min_confidence: float = 0.0) -> PeakFrame:
    """Find the peak frame of one clip's OpenFace CSV (`FeatureExtraction` or `FaceLandmarkVidMulti`).

    Raises:
        ValueError: the file lacks OpenFace's `frame`/`face_id`/`success`/`AUxx_r` columns, a value
            is not a number, or no row is usable; the message names the file (and line).
    """
    return peak_of(read_openface_csv(csv_path), min_confidence, where=str(csv_path))
