"""Placeholder until the audio data path lands (branch audiodata)."""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_RATE = 16000


def decode_audio(data: Any, where: str) -> np.ndarray:
    return np.asarray(data, dtype=np.float32)
