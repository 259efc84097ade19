"""FER peak frames from OpenFace 2.x action-unit tables (the paper's Eq. 1-2): pandas parses, numpy computes.

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
    numeric = table[cols]
    if not all(pd.api.types.is_float_dtype(t) or pd.api.types.is_integer_dtype(t) for t in numeric.dtypes):
        numeric = numeric.apply(pd.to_numeric, errors="coerce")
    numeric = numeric.astype(np.float64)
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
        header = [c.strip() for c in pd.read_csv(path, skipinitialspace=True, nrows=0).columns]
        intensities, presences = au_columns(header)
        wanted = {*REQUIRED_COLUMNS, "timestamp", *intensities, *presences}
        try:  # the fast path: only the columns used, parsed as numbers by the C reader (which skips the
            # spaces of ", " itself: `skipinitialspace` would cost a third of the time); no NA markers
            table = pd.read_csv(path, usecols=lambda c: c.strip() in wanted, dtype=np.float64, na_filter=False)
        except ValueError:  # a value is not a number (or a column is missing): read as text to name the line
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
    def column(name: str) -> np.ndarray:
        return table[name].to_numpy(dtype=np.float64)

    keep = np.ones(len(table), dtype=bool)
    if start is not None or end is not None:
        ts = column("timestamp")
        keep = (ts >= (start if start is not None else -np.inf)) & (ts <= (end if end is not None else np.inf))
    failed = keep & (column("success") != 1)
    low = keep & ~failed & (column("confidence") < min_confidence)
    skipped = {"failed": int(failed.sum()), "low_confidence": int(low.sum())}
    rows = np.flatnonzero(keep & ~failed & ~low)
    if len(rows) == 0:
        raise ValueError(f"{where}: no usable row (skipped {skipped})")
    intensities, presences = au_columns(list(table.columns))
    scores = table[intensities].to_numpy(dtype=np.float64).sum(axis=1)[rows]  # S_f (Eq. 1)
    faces = column("face_id")[rows].astype(np.int64)
    order, first = np.unique(faces, return_index=True)
    face_scores: dict[int, float] = {}
    best_row: dict[int, int] = {}
    for face in order[np.argsort(first)]:  # a loop over faces (a handful), not rows; faces in order of appearance
        members = np.flatnonzero(faces == face)
        k = members[np.argmax(scores[members])]  # the face's first highest-scoring row
        face_scores[int(face)], best_row[int(face)] = float(scores[k]), int(rows[k])
    winner = max(face_scores, key=face_scores.__getitem__)  # the face seen first among equal bests (Eq. 2)
    row = table.iloc[best_row[winner]]
    active = [int(c[2:4]) for c in presences if row[c] == 1]
    return PeakFrame(frame=int(row["frame"]), face_id=winner, score=face_scores[winner], active_aus=active,
                     skipped=skipped, timestamp=float(row["timestamp"]) if "timestamp" in table.columns else None,
                     face_scores=face_scores)


def peak_frame(csv_path: str | Path, min_confidence: float = 0.0) -> PeakFrame:
    """Find the peak frame of one clip's OpenFace CSV (`FeatureExtraction` or `FaceLandmarkVidMulti`).

    Raises:
        ValueError: the file lacks OpenFace's `frame`/`face_id`/`success`/`AUxx_r` columns, a value
            is not a number, or no row is usable; the message names the file (and line).
    """
    return peak_of(read_openface_csv(csv_path), min_confidence, where=str(csv_path))
