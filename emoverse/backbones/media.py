"""What a backbone processor accepts as audio and video, checked where examples enter it.

Audio reaches every backbone in one form: a 1-D float waveform at 16 kHz mono (`SAMPLE_RATE`). The
feature extractors of audio models assume it and fail on anything else with errors that do not name
the input (stereo `(T, 2)` arrays) or accept a wrong rate silently (Gemma 3n's ignores
`sampling_rate`); resampling is the data side's job (`emoverse.amt`), so here a wrong shape is one line.
A clip as a video is its frames stacked `(T, H, W, 3)` uint8, the layout transformers' video processors take.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

SAMPLE_RATE = 16_000
"""Hz of every waveform a backbone is given."""

MIN_AUDIO_SECONDS = 0.1
"""The shortest clip a backbone takes. Shorter clips give Whisper-style encoders under two audio tokens, and
Qwen2-Audio then takes a legacy path (it looks for two adjacent audio tokens) that misplaces the features."""

MODALITIES = ("image", "video", "audio")


def check_audio(audio: Any, where: str) -> np.ndarray:
    """`audio` as a float32 1-D array, or one line (starting with `where`: "row 2") naming what is wrong with it.

    Raises:
        ValueError: not a 1-D float array, not finite, or shorter than `MIN_AUDIO_SECONDS`.
    """
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        shape = getattr(audio, "shape", None)
        raise ValueError(f"{where}: audio must be a 1-D float waveform at {SAMPLE_RATE} Hz mono, got "
                         f"{type(audio).__name__}{'' if shape is None else f' of shape {shape}'}; resample and "
                         "mix down to mono first")
    least = int(MIN_AUDIO_SECONDS * SAMPLE_RATE)
    if len(audio) < least:
        raise ValueError(f"{where}: audio has {len(audio)} samples, fewer than {least} ({MIN_AUDIO_SECONDS} s at "
                         f"{SAMPLE_RATE} Hz); give such a record no audio (None)")
    if not np.isfinite(audio).all():
        raise ValueError(f"{where}: audio holds NaN or infinite samples")
    return audio.astype(np.float32, copy=False)


def video_array(frames: Sequence[Image.Image], row: int) -> np.ndarray:
    """A clip's frames as one video `(T, H, W, 3)` uint8.

    Raises:
        ValueError: the frames differ in size (a video has one frame size).
    """
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"row {row}: frames of sizes {sorted(sizes)} cannot form one video; give frames of one "
                         "size, or set as_video False")
    return np.stack([np.asarray(f.convert("RGB")) for f in frames])


def silence(samples: int) -> np.ndarray:
    """A silent clip of `samples` samples (token counts depend on a clip's length only)."""
    return np.zeros(samples, dtype=np.float32)
