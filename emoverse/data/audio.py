"""Clip audio: 16 kHz mono waveforms, their lossless shard encoding, and the quality checks of the AMT build.

A record's audio is a 1-D float32 waveform in [-1, 1] at `SAMPLE_RATE` (what Whisper-, HuBERT- and
wav2vec2-style encoders take) of at most `MAX_SECONDS`. In a shard it is one FLAC member,
`{id}.audio.flac` (`AUDIO_KEY`): 16-bit mono FLAC at 16 kHz. FLAC rather than raw PCM: it is
lossless at 16 bits (the usual depth of WAV and mp4 audio tracks) and smaller (a second of the demo's
voices: 16 kB against 32 kB of PCM); it carries its own sample rate and length; PyAV, already the
video decoder, reads and writes it, and so do soundfile, ffmpeg and every audio tool.

The checks (`audio_fault`, `read_clip_audio`) give one of `AUDIO_FAULTS` or None; docs/amt.md says
what the build does with each.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
"""Samples per second of every stored waveform."""
MAX_SECONDS = 30.0
"""Longest stored audio: Whisper's input window (Qwen2-Audio and Qwen2.5-Omni encode 30 s per window).
Longer clips keep their first 30 s and are counted (`audio_cut`); a shard member is at most ~1 MB."""
MAX_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)
MIN_SECONDS = 0.1
"""Shortest usable audio: 5 frames of a Whisper or HuBERT encoder (20 ms each). Shorter (or empty) is `too_short_audio`."""
SILENCE_DBFS = -60.0
"""A clip whose RMS level is below this (dB relative to full scale) is `silent_audio`: ffmpeg's `silencedetect`
default threshold; speech recordings sit near -20 to -30 dBFS, digital silence at -inf."""
FULL_SCALE = 0.999
"""A sample with |x| at or above this is at full scale (the 16-bit limits are +-32767/32768 = +-0.99997)."""
CLIP_FRACTION = 0.01
"""A clip with more than this fraction of its samples at full scale is `clipped_audio`."""
AUDIO_KEY = "audio.flac"
"""The shard member suffix of a record's audio (`{id}.audio.flac`); its `.json` says `"audio": "audio.flac"`."""

AUDIO_FAULTS: dict[str, str] = {
    "no_audio_stream": "the clip's file has no audio stream",
    "missing_audio_file": "the clip's separate audio file (CMU-MOSEI `audio` folder) does not exist",
    "undecodable_audio": "the audio stream cannot be decoded or resampled to 16 kHz mono (corrupt data, unknown "
                         "codec or sample rate)",
    "too_short_audio": f"the clip's audio span is shorter than {MIN_SECONDS} s (or empty)",
    "silent_audio": f"the clip's RMS level is below {SILENCE_DBFS} dBFS",
    "clipped_audio": f"more than {CLIP_FRACTION:.0%} of the samples are at full scale (|x| >= {FULL_SCALE}); "
                     "the audio is kept",
    "audio_cut": f"the clip's audio is longer than {MAX_SECONDS} s; its first {MAX_SECONDS} s are kept",
}
"""Why a record's audio is missing, removed or kept with a warning (the manifest's `audio.faults`)."""
KEPT_FAULTS: frozenset[str] = frozenset({"clipped_audio", "audio_cut"})
"""Faults after which the audio is still stored; after the others the record is kept without audio."""


class AudioFault(ValueError):
    """Audio that cannot be taken from a clip: `reason` is one of `AUDIO_FAULTS`, the message names the file."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in AUDIO_FAULTS:
            raise ValueError(f"audio fault {reason!r}; expected one of {sorted(AUDIO_FAULTS)}")
        super().__init__(message)
        self.reason = reason


def check_wave(wave: Any, where: str) -> np.ndarray:
    """`wave` if it is a storable waveform (1-D float32, 1..MAX_SAMPLES samples, finite, in [-1, 1]).

    Raises:
        ValueError: naming `where` and what was expected.
    """
    if not isinstance(wave, np.ndarray):
        raise ValueError(f"{where}: audio is {type(wave).__name__}; expected a 1-D float32 numpy array or FLAC bytes")
    if wave.ndim != 1 or wave.dtype != np.float32:
        raise ValueError(f"{where}: audio has shape {wave.shape} and dtype {wave.dtype}; expected a 1-D float32 "
                         f"mono waveform at {SAMPLE_RATE} Hz (mix channels down, use .astype(np.float32))")
    if not 0 < len(wave) <= MAX_SAMPLES:
        raise ValueError(f"{where}: audio has {len(wave)} samples; expected 1..{MAX_SAMPLES} ({MAX_SECONDS} s at "
                         f"{SAMPLE_RATE} Hz; use audio=None for no audio, cut longer clips)")
    lo, hi = float(wave.min()), float(wave.max())
    if not (math.isfinite(lo) and math.isfinite(hi) and lo >= -1.0 and hi <= 1.0):
        raise ValueError(f"{where}: audio samples span [{lo}, {hi}]; expected finite values in [-1, 1]")
    return wave


def encode_audio(wave: np.ndarray) -> bytes:
    """A waveform as 16-bit mono FLAC at `SAMPLE_RATE` (the shard's `audio.flac` member).

    Args:
        wave: 1-D float32 in [-1, 1] at `SAMPLE_RATE` (`check_wave`); quantised as round(x * 32768),
            clipped to the int16 range, so `decode_audio(encode_audio(w))` is `w` to within 1/65536
            (1/32768 at +1.0, which becomes 32767).

    Returns:
        The FLAC file's bytes; the same wave always gives the same bytes (`fflags=+bitexact`: the muxer
        writes the vendor string "ffmpeg", not the libavformat version).
    """
    import av

    wave = check_wave(wave, "encode_audio")
    pcm = np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def decode_audio(data: bytes | np.ndarray, where: str) -> np.ndarray:
    """A stored waveform: FLAC (or any audio file PyAV reads) as bytes, or an in-memory array, as 1-D float32 at 16 kHz.

    Raises:
        ValueError: the blob does not decode to audio, or the array is not a storable waveform; names `where`.
    """
    if isinstance(data, np.ndarray):
        return check_wave(data, where)
    if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
        raise ValueError(f"{where}: audio is {type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}; "
                         "expected non-empty FLAC bytes or a float32 array")
    try:
        wave, _, _ = _decode(io.BytesIO(bytes(data)), 0.0, None, MAX_SECONDS + 1.0, where)
    except AudioFault as err:  # its message names `where` already
        raise ValueError(str(err)) from None
    if not len(wave):
        raise ValueError(f"{where}: the audio decodes to no samples")
    return check_wave(np.clip(wave, -1.0, 1.0), where)


def rms_dbfs(wave: np.ndarray) -> float:
    """The RMS level in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def clipped_fraction(wave: np.ndarray) -> float:
    """The fraction of samples at full scale (|x| >= `FULL_SCALE`)."""
    return float(np.mean(np.abs(wave) >= FULL_SCALE)) if len(wave) else 0.0


def audio_fault(wave: np.ndarray) -> str | None:
    """The first quality fault of a decoded waveform: `too_short_audio`, `silent_audio`, `clipped_audio`, or None."""
    if len(wave) < MIN_SECONDS * SAMPLE_RATE:
        return "too_short_audio"
    if rms_dbfs(wave) < SILENCE_DBFS:
        return "silent_audio"
    if clipped_fraction(wave) > CLIP_FRACTION:
        return "clipped_audio"
    return None


@dataclass
class ClipAudio:
    """The audio taken from one clip.

    Attributes:
        wave: the waveform to store (None when `fault` removes it).
        fault: the first of `AUDIO_FAULTS` that applies, or None.
        detail: what was found (file, level, duration), for qc.jsonl.
        cut: the span was longer than `MAX_SECONDS` and its first `MAX_SECONDS` were kept.
    """

    wave: np.ndarray | None
    fault: str | None = None
    detail: str = ""
    cut: bool = False


def read_audio(path: str | Path, start: float | None = None, end: float | None = None,
               max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, bool]:
    """The [start, end] span of a media file's first audio stream, resampled to 16 kHz mono float32.

    Decoding stops at `start + max_seconds`; the span is cut there.

    Args:
        path: a video or audio file.
        start, end: the span in seconds of the file's clock; None = the file's start / end.
        max_seconds: the longest span returned.

    Returns:
        (waveform, cut): `cut` says the span ran past `max_seconds` and was cut.

    Raises:
        AudioFault: `no_audio_stream` or `undecodable_audio`, naming the file.
    """
    path = Path(path)
    wave, cut, _ = _decode(str(path), start or 0.0, end, max_seconds, str(path))
    return np.clip(wave, -1.0, 1.0), cut


def read_clip_audio(path: str | Path, start: float | None = None, end: float | None = None) -> ClipAudio:
    """A clip's audio with its quality fault: what the AMT build stores (`wave`) and counts (`fault`, `cut`)."""
    path = Path(path)
    if not path.is_file():
        return ClipAudio(None, "missing_audio_file", str(path))
    try:
        wave, cut = read_audio(path, start, end)
    except AudioFault as err:
        return ClipAudio(None, err.reason, str(err))
    fault = audio_fault(wave)
    detail = (f"{path}: {len(wave) / SAMPLE_RATE:.3f} s, {rms_dbfs(wave):.1f} dBFS, "
              f"{clipped_fraction(wave):.2%} at full scale")
    if fault is not None and fault not in KEPT_FAULTS:
        return ClipAudio(None, fault, detail, cut)
    return ClipAudio(wave, fault, detail, cut)


def _decode(source: Any, start: float, end: float | None, max_seconds: float, where: str) -> tuple[np.ndarray, bool, int]:
    """Decode [start, min(end, start + max_seconds)] of `source`'s first audio stream; returns (wave, cut, input rate)."""
    import av

    ffmpeg_error = getattr(av, "FFmpegError", None) or av.error.FFmpegError
    stop = start + max_seconds if end is None else min(end, start + max_seconds)
    try:
        with av.open(source) as container:
            if not container.streams.audio:
                raise AudioFault("no_audio_stream", f"{where}: no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            if not rate:
                raise AudioFault("undecodable_audio", f"{where}: the audio stream has no sample rate")
            # channels are kept and averaged here (librosa's to_mono): FFmpeg's own stereo-to-mono
            # matrix weights each channel by 1/sqrt(2), 3 dB louder than the channels, and can clip
            resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
            if start > 0 and stream.time_base:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            chunks: list[np.ndarray] = []
            origin = None  # time of the first decoded sample
            clock = 0.0  # the next frame's time when a frame has none
            beyond = False  # audio continues past `stop`
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else clock
                clock = t + frame.samples / (frame.sample_rate or rate)
                if t >= stop:
                    beyond = True
                    break
                if origin is None:
                    origin = t
                chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(None)]
    except AudioFault:
        raise
    except (ffmpeg_error, ValueError, OSError, EOFError) as err:
        raise AudioFault("undecodable_audio", f"{where}: cannot decode the audio ({type(err).__name__}: {err})") from err
    if origin is None:
        return np.zeros(0, np.float32), False, rate
    wave = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    a = max(0, round((start - origin) * SAMPLE_RATE))
    b = max(a, round((stop - origin) * SAMPLE_RATE))
    wanted_past_limit = end is None or end > start + max_seconds
    cut = wanted_past_limit and (beyond or len(wave) > b)
    return wave[a:b], cut, rate
