"""`read_clip`: uniform frames, segments, the peak frame, resizing, and corrupt files, on videos written here."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from emoverse.amt.video import MediaError, read_clip, uniform_times


def write_video(path: Path, frames: int, fps: int = 10) -> Path:
    """Frame k is flat grey 8k (k < 32), lossless H.264."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(frames):
            image = np.full((48, 64, 3), 8 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def index_of(jpeg: bytes) -> int:
    return round(float(np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float64).mean()) / 8)


def test_uniform_frames_are_the_bin_centres(tmp_path: Path) -> None:
    clip = read_clip(write_video(tmp_path / "a.mp4", 30), num_frames=4, size=32)  # 3.0 s at 10 fps
    assert uniform_times(0.0, 3.0, 4) == [0.375, 1.125, 1.875, 2.625]
    assert [index_of(f) for f in clip.frames] == [4, 11, 19, 26]  # nearest frames: 0.4, 1.1, 1.9, 2.6 s
    assert clip.peak_frame is None
    assert all(Image.open(io.BytesIO(f)).size == (32, 32) for f in clip.frames)


def test_segment_and_peak_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", 30)
    clip = read_clip(path, num_frames=2, size=32, start=1.0, end=2.0, peak_time=1.52)
    assert [index_of(f) for f in clip.frames] == [13, 15, 18]  # bins 1.25, 1.75 and the peak at 1.5
    assert clip.peak_frame == 1
    same = read_clip(path, num_frames=2, size=32, start=1.0, end=2.0, peak_time=1.26)
    assert len(same.frames) == 2 and same.peak_frame == 0  # the peak is a uniform frame already


def test_corrupt_and_empty_segments_are_media_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 20)
    with pytest.raises(MediaError, match="bad.mp4: cannot decode"):
        read_clip(bad)
    path = write_video(tmp_path / "a.mp4", 10)
    with pytest.raises(MediaError, match="a.mp4: no frame between 5.000 s and 6.000 s"):
        read_clip(path, start=5.0, end=6.0)
