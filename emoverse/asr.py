"""Speech recognition for clips without a transcript: a transformers `automatic-speech-recognition` pipeline.

The model is given by path or hub id (`--asr openai/whisper-small`, or a folder it was saved to); nothing is
loaded unless it is named. The clip's audio is the 16 kHz mono waveform `emoverse.clip_input` decodes, so the
recogniser hears what a hearing backbone hears.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoverse.data.audio import SAMPLE_RATE


class Transcriber:
    """Transcribe 16 kHz mono waveforms with a transformers ASR pipeline.

    Args:
        model: a local folder or hub id of an ASR model (Whisper, wav2vec2 CTC, ...).
        device: a torch device string; None: the pipeline's default (CPU).
        generate_kwargs: passed to the model's `generate` (e.g. `{"language": "en"}` for a multilingual Whisper).
    """

    def __init__(self, model: str, device: str | None = None, generate_kwargs: dict[str, Any] | None = None) -> None:
        from transformers import pipeline

        try:
            self.pipe = pipeline("automatic-speech-recognition", model=model, device=device)
        except (OSError, ValueError) as err:
            raise ValueError(f"--asr {model}: cannot load an automatic-speech-recognition model ({err}); expected "
                             "a folder or hub id such as openai/whisper-small") from None
        self.model, self.generate_kwargs = model, dict(generate_kwargs or {})

    def __call__(self, wave: np.ndarray) -> str:
        """The transcript of one waveform (stripped; may be empty)."""
        kwargs = {"generate_kwargs": self.generate_kwargs} if self.generate_kwargs else {}
        out = self.pipe({"raw": np.asarray(wave, np.float32), "sampling_rate": SAMPLE_RATE}, **kwargs)
        return str(out["text"]).strip()
