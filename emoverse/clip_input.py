"""A video file as model input: its frames, its audio and its FER peak frame, decoded as the AMT build decodes them.

Frames come from `emoverse.amt.video.read_clip` (N uniformly spaced frames plus the peak frame, resized to a
square), the audio from `emoverse.data.audio.read_clip_audio` (16 kHz mono, the build's quality checks), the
peak frame from an OpenFace CSV when one is given (`emoverse.amt.peak`, the paper's sum of AU intensities) and
otherwise from the faces (`emoverse.face_peak`). Bad input raises `ClipError`, one line naming the file and
what was expected (`CLIP_FAULTS` names each kind).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from emoverse.amt.video import MediaError, read_clip
from emoverse.data.audio import AUDIO_FAULTS, KEPT_FAULTS, MAX_SECONDS, SAMPLE_RATE, read_clip_audio

MAX_CLIP_SECONDS = MAX_SECONDS
"""Longest clip analysed (30 s): one utterance, as in the AMT (CMU-MOSEI segments, MELD and ECF turns), and the
longest audio a record holds (Whisper's window). Cut a longer video into utterances first."""
FRAME_COUNT_TOLERANCE = 0.02
"""An OpenFace CSV whose frame count differs from the clip's by more than this fraction (and more than 2 frames)
belongs to another clip (OpenFace writes one row per decoded frame and face)."""

CLIP_FAULTS: dict[str, str] = {
    "missing": "the file does not exist",
    "empty": "the file is empty (0 bytes)",
    "not_a_video": "the file is not a video (no video stream, or not a media file at all)",
    "undecodable": "the video stream cannot be decoded (corrupt or truncated file, unknown codec)",
    "too_long": f"the clip is longer than {MAX_CLIP_SECONDS:g} s",
    "no_audio": "the audio is needed (the backbone hears, or --asr transcribes it) and the clip has no usable track",
    "openface_mismatch": "the OpenFace CSV has another frame count than the clip (a CSV of another clip)",
    "bad_openface": "the OpenFace CSV cannot be read or has no usable row",
    "no_text": "no transcript was given or heard (emoverse analyze: --text, --transcripts or --asr)",
    "prompt": "a task's prompt cannot be built (e.g. longer than the model's context with this transcript)",
}
"""Why a clip is refused (`ClipError.reason`)."""


class ClipError(ValueError):
    """A clip that cannot be analysed: `reason` is one of `CLIP_FAULTS`; the message names the file."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ClipInput:
    """One clip, ready for `AMTRecord`.

    Attributes:
        path: the video file.
        frames: RGB frames in time order (uniform frames plus the peak frame).
        times: each frame's time in seconds.
        peak_frame: index of the FER peak frame in `frames`.
        peak_source: "openface" (the CSV's AU sum), "face" (`emoverse.face_peak`) or "middle" (no face found).
        audio: 16 kHz mono waveform (None when not asked for).
        duration: the clip's length in seconds.
        warnings: what the answers should be read with (no face found, audio clipped), one line each.
    """

    path: Path
    frames: list[Image.Image]
    times: list[float]
    peak_frame: int
    peak_source: str
    audio: np.ndarray | None
    duration: float
    warnings: list[str] = field(default_factory=list)

    @property
    def has_face(self) -> bool:
        return self.peak_source != "middle"


@dataclass
class ClipInfo:
    """What the container says: duration (s), video frame count, frame rate, whether an audio stream exists, and the
    frames' width / height (display aspect)."""

    duration: float
    frames: int
    fps: float
    has_audio: bool
    aspect: float = 1.0


def probe(path: str | Path) -> ClipInfo:
    """Open a clip's container and check it is a video of at most `MAX_CLIP_SECONDS`.

    Raises:
        ClipError: missing, empty, not a video, unreadable or too long.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise ClipError("missing", f"{path}: no such file; expected a video clip (mp4, mkv, avi, webm, ...)")
    if path.stat().st_size == 0:
        raise ClipError("empty", f"{path}: the file is empty (0 bytes); expected a video clip")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError("not_a_video", f"{path}: no video stream; expected a video clip (an audio-only file "
                                               "or another kind of file)")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            else:  # no duration in the header (a browser's MediaRecorder webm): the last packet's time
                ends = [float((packet.pts + (packet.duration or 0)) * packet.time_base)
                        for packet in container.demux(stream) if packet.pts is not None and packet.time_base]
                duration = max(ends, default=0.0)
            frames = stream.frames or round(duration * fps)
            has_audio = bool(container.streams.audio)
            ctx = stream.codec_context
            aspect = (ctx.width / ctx.height) * float(stream.sample_aspect_ratio or 1) if ctx.width and ctx.height else 1.0
    except ClipError:
        raise
    except (OSError, ValueError) as err:  # PyAV's FFmpegError subclasses these; "Invalid data found ..."
        why = getattr(err, "strerror", None) or err  # PyAV's message without its errno and path
        raise ClipError("not_a_video", f"{path}: not a readable video ({why}); expected a video clip") from None
    if duration > MAX_CLIP_SECONDS:
        raise ClipError("too_long", f"{path}: the clip is {duration:.1f} s long; expected at most {MAX_CLIP_SECONDS:g} s "
                                    "(one utterance: cut longer videos into utterances first)")
    return ClipInfo(duration, frames, fps, has_audio, aspect)


def openface_peak_time(csv_path: str | Path, clip: str | Path, info: ClipInfo) -> float:
    """The peak frame's time from an OpenFace CSV of `clip`, after checking its frame count matches the clip's.

    Raises:
        ClipError: the CSV cannot be read, has no usable row, or counts another number of frames.
    """
    from emoverse.amt.peak import peak_of, read_openface_csv

    try:
        table = read_openface_csv(csv_path)
        peak = peak_of(table, where=str(csv_path))
    except (ValueError, OSError) as err:
        raise ClipError("bad_openface", f"{csv_path}: {err}; expected OpenFace 2.x FeatureExtraction output for {clip}") \
            from None
    counted = int(table["frame"].nunique())
    if info.frames and abs(counted - info.frames) > max(2, FRAME_COUNT_TOLERANCE * info.frames):
        raise ClipError("openface_mismatch", f"{csv_path}: {counted} frames, but {clip} has {info.frames}; expected "
                                             "the OpenFace CSV of this clip")
    if peak.timestamp is not None:
        return peak.timestamp
    return (peak.frame - 1) / info.fps if info.fps else 0.0


def read_clip_input(path: str | Path, num_frames: int = 8, size: int = 448, audio_for: str | None = None,
                    openface: str | Path | None = None) -> ClipInput:
    """Decode one clip for `analyze`: frames, peak frame, and the audio when asked for.

    Args:
        path: the video file (at most `MAX_CLIP_SECONDS`).
        num_frames: uniformly spaced frames (the AMT build's `num_frames`); the peak frame is added.
        size: frames are resized to `size` x `size` (the AMT build's `frame_size`).
        audio_for: why the audio is needed ("the backbone hears", "--asr transcribes it"); None: not decoded.
            A clip without usable audio is refused, naming this reason.
        openface: the clip's OpenFace CSV; without it the peak comes from `emoverse.face_peak`.

    Raises:
        ClipError: see `CLIP_FAULTS`.
    """
    path = Path(path)
    info = probe(path)
    warnings: list[str] = []
    try:
        if openface is not None:
            peak_time, source = openface_peak_time(openface, path, info), "openface"
        else:
            from emoverse.face_peak import CASCADE, face_peak

            found = face_peak(path, aspect=info.aspect)
            peak_time, source = found.time, "face"
            if found.time is None:
                source = "middle"
                warnings.append(f"{path}: no face in any of {found.candidates} frames (OpenCV {CASCADE}); expected "
                                "a visible frontal face: fer describes the middle frame")
        clip = read_clip(path, num_frames=num_frames, size=size, peak_time=peak_time)
    except MediaError as err:
        raise ClipError("undecodable", f"{err}; expected a decodable video clip") from None
    frames = [Image.open(io.BytesIO(jpeg)).convert("RGB") for jpeg in clip.frames]
    peak = clip.peak_frame if clip.peak_frame is not None else len(frames) // 2
    audio = None
    if audio_for is not None:
        got = read_clip_audio(path)
        if got.wave is None:
            raise ClipError("no_audio", f"{path}: {AUDIO_FAULTS[got.fault]} ({got.fault}); expected an audio track "
                                        f"with speech ({audio_for})")
        if got.fault in KEPT_FAULTS:
            warnings.append(f"{path}: {AUDIO_FAULTS[got.fault]}")
        audio = got.wave
    return ClipInput(path, frames, clip.times, peak, source, audio,
                     info.duration or (len(audio) / SAMPLE_RATE if audio is not None else 0.0), warnings)
