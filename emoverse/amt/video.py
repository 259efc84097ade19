"""Clip frames with PyAV: N uniformly spaced frames (plus the FER peak frame), resized, JPEG-encoded.

One decoding pass per clip: the target times are known up front (the segment, or the container's
duration), frames are decoded in order, and each target takes the decoded frame nearest to it;
decoding stops after the last target. Only the chosen frames are converted (libswscale resizes
them to `size` x `size`, the input of a 448 px InternViT tile) and JPEG-encoded, so a clip never
holds more than two decoded frames.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av

FFmpegError = getattr(av, "FFmpegError", None) or av.error.FFmpegError


class MediaError(ValueError):
    """A clip that cannot be decoded, or has no frame in its segment; the message names the file."""


@dataclass
class ClipFrames:
    """The frames kept from one clip.

    Attributes:
        frames: JPEG bytes in time order.
        times: each frame's time in seconds (in the file's clock).
        peak_frame: index of the peak frame in `frames`, when a peak time was given.
    """

    frames: list[bytes]
    times: list[float]
    peak_frame: int | None = None


def uniform_times(start: float, end: float, num_frames: int) -> list[float]:
    """The centres of `num_frames` equal bins of [start, end]."""
    step = (end - start) / num_frames
    return [start + step * (k + 0.5) for k in range(num_frames)]


def read_clip(path: str | Path, num_frames: int = 8, size: int = 448, start: float | None = None,
              end: float | None = None, peak_time: float | None = None, quality: int = 90) -> ClipFrames:
    """Read `num_frames` uniformly spaced frames of a clip (or of its [start, end] segment) and its peak frame.

    Args:
        path: the video file.
        num_frames: frames spread uniformly over the clip.
        size: frames are resized to `size` x `size`.
        start, end: the segment in seconds; None = the file's start / end.
        peak_time: time of the FER peak frame (OpenFace `timestamp`), added to the frames (or the
            uniform frame at that time reused) and marked as `peak_frame`.
        quality: JPEG quality.

    Raises:
        MediaError: the file cannot be opened or decoded, or the segment holds no frame.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            t0 = start or 0.0
            t1 = end if end is not None else _duration(container, stream)
            if t1 is None:  # no duration in the container: find it by decoding once
                t1 = max((f.time or 0.0) for f in container.decode(stream))
                container.seek(0)
            targets = sorted(set(uniform_times(t0, t1, num_frames)) | ({peak_time} if peak_time is not None else set()))
            if start:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            chosen = _nearest_frames(container, stream, targets, t0, t1, size, quality)
    except FFmpegError as err:
        raise MediaError(f"{path}: cannot decode ({err})") from err
    if not chosen:
        raise MediaError(f"{path}: no frame between {t0:.3f} s and {t1:.3f} s")
    times = sorted(chosen)
    peak = None
    if peak_time is not None:
        peak = min(range(len(times)), key=lambda k: abs(times[k] - peak_time))
    return ClipFrames(frames=[chosen[t] for t in times], times=times, peak_frame=peak)


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _nearest_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, targets: list[float],
                    t0: float, t1: float, size: int, quality: int) -> dict[float, bytes]:
    """Decode in order; each target time takes the nearest frame within [t0, t1]. Returns time -> JPEG."""
    chosen: dict[float, bytes] = {}
    prev = None  # (time, frame) of the last decoded frame inside the window
    k = 0
    for frame in container.decode(stream):
        t = frame.time if frame.time is not None else 0.0
        if t < t0 - 1e-6:
            continue
        if t > t1 + 1e-6:
            break
        while k < len(targets) and t >= targets[k]:
            if prev is not None and targets[k] - prev[0] < t - targets[k]:
                pick_t, pick = prev
            else:
                pick_t, pick = t, frame
            if pick_t not in chosen:
                chosen[pick_t] = _jpeg(pick, size, quality)
            k += 1
        if k == len(targets):
            break
        prev = (t, frame)
    if k < len(targets) and prev is not None and prev[0] not in chosen:  # targets past the last frame
        chosen[prev[0]] = _jpeg(prev[1], size, quality)
    return chosen


def _jpeg(frame: av.VideoFrame, size: int, quality: int) -> bytes:
    # one scaling thread: PyAV >= 18 scales on an automatic thread pool by default, and a build worker forked
    # from a process that had scaled already inherited that pool without its threads and hung
    image = frame.reformat(width=size, height=size, format="rgb24", threads=1).to_image()
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
