"""FER peak frames from OpenFace 2.x action-unit CSVs (the paper's Eq. 1-2).

S_f = Σ_i AU_i(f) over the AU intensities (`AUxx_r`) of frame f; the peak is the argmax. With
several faces (OpenFace's `face_id`, MELD scenes), each face's best frame is found and the face
with the highest score wins. Rows OpenFace marks as failed (`success` = 0) or below
`min_confidence` are skipped and counted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PeakFrame:
    """The most expressive frame of a clip.

    Attributes:
        frame: OpenFace's frame number (1-based, as in the CSV).
        face_id: the face whose expression peaks there.
        score: S_f, the sum of its AU intensities.
        active_aus: AU numbers OpenFace marks present (`AUxx_c` = 1) in that row.
        skipped: rows skipped as failed or low-confidence tracking, by reason.
    """

    frame: int
    face_id: int
    score: float
    active_aus: list[int]
    skipped: dict[str, int] = field(default_factory=dict)


def peak_frame(csv_path: str | Path, min_confidence: float = 0.0) -> PeakFrame:
    """Find the peak frame of one clip's OpenFace CSV (`FeatureExtraction` or `FaceLandmarkVidMulti`).

    Raises:
        ValueError: the file lacks OpenFace's `frame`/`face_id`/`success`/`AUxx_r` columns, a value
            is not a number, or no row is usable; the message names the file (and line).
    """
    path = Path(csv_path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)  # OpenFace 2.0's multi-face recorder writes ", "
        columns = reader.fieldnames or []
        intensities = [c for c in columns if c.startswith("AU") and c.endswith("_r")]
        presences = [c for c in columns if c.startswith("AU") and c.endswith("_c")]
        missing = {"frame", "face_id", "success", "confidence"} - set(columns)
        if missing or not intensities:
            raise ValueError(f"{path}: not an OpenFace AU CSV; missing columns {sorted(missing) or ['AUxx_r']}")
        best: dict[int, tuple[float, int, list[int]]] = {}
        skipped = {"failed": 0, "low_confidence": 0}
        for line, row in enumerate(reader, start=2):
            try:
                if float(row["success"]) != 1:
                    skipped["failed"] += 1
                    continue
                if float(row["confidence"]) < min_confidence:
                    skipped["low_confidence"] += 1
                    continue
                score = sum(float(row[c]) for c in intensities)
                face, frame = int(float(row["face_id"])), int(float(row["frame"]))
                active = [int(c[2:4]) for c in presences if float(row[c]) == 1]
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path} line {line}: expected numbers in the OpenFace columns ({err})") from err
            if face not in best or score > best[face][0]:
                best[face] = (score, frame, active)
    if not best:
        raise ValueError(f"{path}: no usable row (skipped {skipped})")
    face = max(best, key=lambda k: best[k][0])
    score, frame, active = best[face]
    return PeakFrame(frame=frame, face_id=face, score=score, active_aus=active, skipped=skipped)
