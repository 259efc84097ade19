"""FER building blocks on real OpenFace 2.x CSVs: peak frames (Eq. 1-2) and AU captions (Eq. 3)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from emoverse.amt import au_caption, peak_frame
from emoverse.amt.facs import NEUTRAL_CAPTION

OPENFACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "openface"
needs_openface = pytest.mark.skipif(not OPENFACE.exists(), reason=f"real OpenFace CSVs not found at {OPENFACE}")


def _independent_peak(path: Path) -> tuple[float, int, int]:
    """Max over usable rows of the summed AU intensities, computed without emoverse."""
    best = (-1.0, 0, 0)
    with path.open() as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            if float(row["success"]) != 1:
                continue
            s = sum(float(v) for k, v in row.items() if k.startswith("AU") and k.endswith("_r"))
            if s > best[0]:
                best = (s, int(row["frame"]), int(row["face_id"]))
    return best


@needs_openface
@pytest.mark.parametrize("name", ["emoinfer/default.csv", "emoinfer/changeLighting.csv", "act409/clip1.csv", "act409/clip4.csv"])
def test_peak_frame_matches_an_independent_argmax(name: str) -> None:
    path = OPENFACE / name
    peak = peak_frame(path)
    score, frame, face = _independent_peak(path)
    assert (peak.frame, peak.face_id) == (frame, face)
    assert peak.score == pytest.approx(score)


@needs_openface
def test_multi_face_clip_counts_failed_rows_and_takes_the_best_face() -> None:
    peak = peak_frame(OPENFACE / "act409" / "clip1.csv")
    with (OPENFACE / "act409" / "clip1.csv").open() as f:
        failed = sum(float(r["success"]) != 1 for r in csv.DictReader(f, skipinitialspace=True))
    assert peak.skipped["failed"] == failed > 0
    strict = peak_frame(OPENFACE / "act409" / "clip1.csv", min_confidence=0.9)
    assert strict.skipped["low_confidence"] > 0
    assert all(1 <= au <= 45 for au in peak.active_aus)


def test_not_an_openface_csv_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="x.csv: not an OpenFace AU table"):
        peak_frame(bad)
    bad.write_text("frame,face_id,confidence,success,AU01_r\n1,0,0.9,1,abc\n")
    with pytest.raises(ValueError, match="x.csv line 2: expected numbers"):
        peak_frame(bad)


def test_au_caption_is_the_intersection_in_words() -> None:
    assert au_caption({6, 12, 4}, "joy") == "Cheek raiser, lip corner puller."
    assert au_caption({6, 12}, "sadness") == NEUTRAL_CAPTION
    with pytest.raises(ValueError, match="emotion 'happy'"):
        au_caption({6}, "happy")
