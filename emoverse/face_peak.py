"""The FER peak frame of a clip without OpenFace: the frame whose face departs most from the clip's resting face.

The paper's peak frame is the argmax over frames of S_f, the sum of OpenFace's action-unit intensities
(`emoverse.amt.peak`): the frame whose face is furthest from a neutral one. Without an OpenFace CSV, this
module approximates that with what OpenCV's wheel ships, so nothing is downloaded: the frontal-face Haar
cascade `haarcascade_frontalface_default.xml` (Viola-Jones; in `opencv-python-headless` 4.x's `cv2.data`,
no longer shipped by OpenCV 5's wheels, hence the `<5` bound) finds the largest face in each of
`CANDIDATES` frames spread over the clip; each face is cropped, resized to `CROP` px grey and normalised to
zero mean and unit variance (so a lighting change is not an expression); the clip's resting face is the
pixel-wise median of those crops (an utterance's face is near rest most of the time); the peak is the
frame whose crop differs most from it (mean absolute difference). Why this and not a learned detector
or landmark model (YuNet, MediaPipe, dlib): those need a model file downloaded at run time. The cost: a
Haar cascade misses profiles and strongly tilted faces (such frames are not candidates), and the score
follows any facial movement, speech included, not only the AUs that make an expression.

A clip where no candidate frame has a face gets no peak (`FacePeak.time` is None): the caller uses the
middle frame and says so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from emoverse.amt.video import read_clip

CASCADE = "haarcascade_frontalface_default.xml"
"""The Haar cascade used (from `cv2.data.haarcascades`)."""
CANDIDATES = 16
"""Frames spread uniformly over the clip among which the peak is chosen."""
DETECT_SIZE = 320
"""Candidate frames are decoded at this square size for detection."""
CROP = 48
"""Side of the grey face crops that are compared."""
MIN_FACE = 0.12
"""Smallest face searched for, as a fraction of the frame's side (smaller boxes are mostly false hits)."""


@dataclass
class FacePeak:
    """The face-based peak of a clip.

    Attributes:
        time: the peak frame's time in seconds (None: no face in any candidate frame).
        candidates: frames looked at.
        with_face: candidate frames in which a face was found.
        scores: each face frame's time and departure from the resting face.
    """

    time: float | None
    candidates: int
    with_face: int
    scores: list[tuple[float, float]]


def _cascade():  # noqa: ANN202 - cv2's classifier type
    import cv2

    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
    if cascade.empty():
        raise RuntimeError(f"OpenCV's {CASCADE} is missing from {cv2.data.haarcascades}; install "
                           "opencv-python-headless>=4.8,<5 (OpenCV 5's wheels no longer ship the Haar cascades)")
    return cascade


def largest_face(grey: np.ndarray, cascade: object | None = None) -> tuple[int, int, int, int] | None:
    """The largest face box `(x, y, w, h)` found in a grey uint8 image, or None."""
    cascade = cascade or _cascade()
    side = min(grey.shape[:2])
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3,
                                     minSize=(int(side * MIN_FACE), int(side * MIN_FACE)))
    if len(found) == 0:
        return None
    x, y, w, h = max(found, key=lambda b: b[2] * b[3])
    return int(x), int(y), int(w), int(h)


def face_peak(path: str | Path, candidates: int = CANDIDATES, aspect: float = 1.0) -> FacePeak:
    """Choose a clip's peak frame from its faces (see the module docstring).

    Args:
        path: the video file.
        candidates: frames looked at, spread uniformly over the clip.
        aspect: the video's width / height. `read_clip` gives square frames (the model's input); a cascade
            trained on upright faces misses faces squeezed to 56 % of their width (a 16:9 video), so each
            frame is stretched back to the video's shape before detection.

    Raises:
        MediaError: the clip cannot be decoded (from `read_clip`).
    """
    clip = read_clip(path, num_frames=candidates, size=DETECT_SIZE)
    shape = (round(DETECT_SIZE * aspect), DETECT_SIZE) if aspect >= 1 else (DETECT_SIZE, round(DETECT_SIZE / aspect))
    cascade = _cascade()
    crops, times = [], []
    for jpeg, t in zip(clip.frames, clip.times, strict=True):
        grey = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L").resize(shape, Image.BILINEAR))
        box = largest_face(grey, cascade)
        if box is None:
            continue
        x, y, w, h = box
        crop = np.asarray(Image.fromarray(grey[y:y + h, x:x + w]).resize((CROP, CROP), Image.BILINEAR), np.float32)
        crops.append((crop - crop.mean()) / (crop.std() + 1e-6))
        times.append(t)
    if not crops:
        return FacePeak(None, len(clip.frames), 0, [])
    stack = np.stack(crops)
    rest = np.median(stack, axis=0)
    scores = np.abs(stack - rest).mean(axis=(1, 2))
    best = int(np.argmax(scores))  # the first of equal scores: the earlier frame
    return FacePeak(times[best], len(clip.frames), len(crops), [(t, float(s)) for t, s in zip(times, scores, strict=True)])
