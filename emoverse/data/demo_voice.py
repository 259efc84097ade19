"""Synthetic voices for the demo AMT: a hummed utterance whose prosody tells the emotion and the sentiment.

Each clip is a harmonic tone (a voice's fundamental and overtones) whose pitch contour, loudness,
syllable rate, tremolo and brightness follow the emotion, with the cues that studies of vocal affect
report (Juslin & Laukka, Psychological Bulletin 2003; Scherer, Speech Communication 2003): anger and
joy loud, fast and bright; sadness soft, slow, low and dark; fear high with a tremolo; surprise a
steep final rise. The contour's overall slope follows the sentiment (valence): rising for positive,
falling for negative. A random speaker (pitch within +-3 semitones, level within +-2 dB, timing and
phase jitter) varies every clip, so a model must read the contour and the dynamics, not one pitch.
As half of the demo's words are emotionally flat, a third of its voices are (`FLAT_VOICE`): neutral
prosody whatever the emotion, so sound alone tells much but not all, and the modalities complement
each other. Everything derives from a `random.Random`, so a clip is a function of its seed.
"""

from __future__ import annotations

import math
import random

import numpy as np

from emoverse.data.audio import SAMPLE_RATE

# base pitch (Hz), level (dBFS RMS), syllables per second, tremolo depth (semitones), overtone roll-off (1/k^r),
# final rise (semitones over the last third)
PROSODY: dict[str, tuple[float, float, float, float, float, float]] = {
    "neutral": (140.0, -22.0, 4.0, 0.0, 1.6, 0.0),
    "joy": (220.0, -15.0, 5.0, 0.0, 1.1, 0.0),
    "surprise": (230.0, -16.0, 3.5, 0.0, 1.3, 7.0),
    "anger": (190.0, -12.0, 6.0, 0.0, 0.8, 0.0),
    "fear": (260.0, -21.0, 6.5, 0.8, 1.5, 0.0),
    "sadness": (115.0, -29.0, 2.5, 0.0, 2.2, 0.0),
    "disgust": (125.0, -20.0, 3.0, 0.0, 1.0, -3.0),
}
SLOPE_SEMITONES = 8.0
"""Pitch change over a clip per unit of valence at the extremes: valence +-3 rises / falls by 8 semitones."""
TREMOLO_HZ = 9.0
OVERTONES = 6
FLAT_VOICE = 1 / 3
"""Share of clips spoken with neutral, level prosody whatever their emotion and sentiment."""


def demo_voice(emotion: str, valence: float, rng: random.Random, seconds: float = 1.0) -> np.ndarray:
    """A `seconds`-long 16 kHz float32 clip voicing `emotion` with a pitch slope set by `valence` in [-3, 3]
    (or, with probability `FLAT_VOICE`, a neutral voice with a level contour).

    Args:
        emotion: one of the seven emotions (`PROSODY`).
        valence: the sentiment; its sign and size set whether and how far the pitch rises or falls.
        rng: the clip's own generator (flat or not, speaker and jitter).
        seconds: duration.
    """
    if rng.random() < FLAT_VOICE:
        emotion, valence = "neutral", 0.0
    base, level, rate, tremolo, rolloff, final_rise = PROSODY[emotion]
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / np.float32(SAMPLE_RATE)
    u = t / np.float32(seconds)  # 0 .. 1 through the clip
    speaker = 2 ** (rng.uniform(-3.0, 3.0) / 12)
    semitones = np.float32(SLOPE_SEMITONES * max(-3.0, min(3.0, valence)) / 3.0) * (u - np.float32(0.5))
    if final_rise:
        semitones += np.float32(final_rise) * np.clip((u - np.float32(2 / 3)) * 3, 0.0, 1.0) ** 2
    tremolo_phase = rng.uniform(0, 2 * math.pi)
    if tremolo:
        semitones += np.float32(tremolo) * np.sin(np.float32(2 * math.pi * TREMOLO_HZ) * t + np.float32(tremolo_phase))
    f0 = np.float32(base * speaker) * np.exp2(semitones / np.float32(12))
    # the phase in float64 (it grows to thousands of radians), the rest in float32
    phase = (2 * math.pi / SAMPLE_RATE * np.cumsum(f0, dtype=np.float64) + rng.uniform(0, 2 * math.pi)).astype(np.float32)
    # the overtones by the recurrence sin((k+1)p) = 2 cos(p) sin(kp) - sin((k-1)p): one sin and one cos, not six
    # sins (f0 stays below 520 Hz, so the sixth overtone is below 3.2 kHz, far from the 8 kHz Nyquist limit)
    two_cos, prev, cur = 2 * np.cos(phase), np.zeros(n, np.float32), np.sin(phase)
    voice = cur.copy()
    for k in range(2, OVERTONES + 1):
        prev, cur = cur, two_cos * cur - prev
        voice += np.float32(k ** -rolloff) * cur
    # syllables: a raised-cosine envelope at `rate` per second, with a ragged onset; soft attack and release
    cycles = np.float32(rate * rng.uniform(0.9, 1.1)) * t + np.float32(rng.uniform(0, 0.3))
    envelope = np.float32(0.575) - np.float32(0.425) * np.cos(np.float32(2 * math.pi) * cycles)  # 0.15 .. 1
    envelope *= np.minimum(np.float32(1.0), np.minimum(t, np.float32(seconds) - t) / np.float32(0.03))
    voice *= envelope
    rms = float(np.sqrt(np.mean(np.square(voice, dtype=np.float64)))) or 1.0
    voice *= np.float32(10 ** ((level + rng.uniform(-2.0, 2.0)) / 20) / rms)
    return np.clip(voice, -0.99, 0.99)
