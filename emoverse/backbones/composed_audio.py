"""The audio half of a composed backbone: a transformers speech encoder (Whisper's encoder, HuBERT) with its own
feature extractor, pooled to a fixed number of tokens per second, then its own projector into the LLM.

A clip's token count is a function of its duration alone (`AudioFrontEnd.tokens`), so the processor (in data
workers, without weights) and the model agree on it exactly: the encoder's frames that cover the clip are
average-pooled to `ceil(seconds × tokens_per_second)` tokens. Each clip is encoded on its own, at its own length
(HuBERT) or in the extractor's fixed window (Whisper pads every clip to it), so a clip's tokens do not depend on
which other clips share its batch: batched generation equals one clip at a time.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, PreTrainedModel

from emoverse.backbones.media import MIN_AUDIO_SECONDS, SAMPLE_RATE, silence

AUDIO_TOKEN = "<audio>"


class AudioFrontEnd:
    """Waveforms → the encoder's input features and, per clip, `(width, valid, tokens)`: the feature length to
    encode, how much of it is the clip (the rest is the extractor's padding), and its token count.

    Args:
        extractor: the encoder's feature extractor (`WhisperFeatureExtractor`, `Wav2Vec2FeatureExtractor`, ...).
        tokens_per_second: audio tokens per second of sound (> 0).
    """

    def __init__(self, extractor: Any, tokens_per_second: float) -> None:
        if not tokens_per_second > 0:
            raise ValueError(f"audio_tokens_per_second={tokens_per_second}; expected a number > 0")
        rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{type(extractor).__name__} expects {rate} Hz audio; emoverse gives {SAMPLE_RATE} Hz")
        self.extractor, self.tokens_per_second = extractor, float(tokens_per_second)
        self.input_name = extractor.model_input_names[0]
        probe = int(MIN_AUDIO_SECONDS * SAMPLE_RATE)
        self.units_per_second = self._one(silence(probe))[2] / MIN_AUDIO_SECONDS  # feature units per second of sound

    def _one(self, wave: np.ndarray) -> tuple[torch.Tensor, int, int]:
        out = self.extractor(wave, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt")
        values = out[self.input_name][0]
        mask = out.get("attention_mask")
        return values, values.shape[-1], int(mask.sum()) if mask is not None else values.shape[-1]

    def tokens(self, valid_units: int) -> int:
        """Tokens of a clip whose features hold `valid_units` units of sound (a clip the extractor cut to its
        window counts what was kept)."""
        return max(1, math.ceil(valid_units / self.units_per_second * self.tokens_per_second - 1e-9))

    def __call__(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """`audio_values` `[clips, ..., longest width]` (zero-padded) and `audio_spans` `[clips, 3]`."""
        done = [self._one(c) for c in clips]
        width = max(w for _, w, _ in done)
        values = torch.stack([nn.functional.pad(v, (0, width - w)) for v, w, _ in done])
        spans = torch.tensor([[w, valid, self.tokens(valid)] for _, w, valid in done], dtype=torch.long)
        return values, spans


def encode_audio(encoder: nn.Module, audio_values: torch.Tensor, audio_spans: torch.Tensor) -> torch.Tensor:
    """Each clip through `encoder` at its own width, the frames covering the clip pooled to its token count:
    `[sum of tokens, encoder width]`."""
    name = getattr(encoder, "main_input_name", "input_values")
    out = []
    for x, (width, valid, tokens) in zip(audio_values, audio_spans.tolist(), strict=True):
        frames = encoder(**{name: x[None, ..., :width]}).last_hidden_state
        keep = max(1, math.ceil(frames.shape[1] * valid / width))
        pooled = nn.functional.adaptive_avg_pool1d(frames[:, :keep].transpose(1, 2), tokens)
        out.append(pooled[0].transpose(0, 1))
    return torch.cat(out)


def load_audio_encoder(path: str, trust_remote_code: bool = False) -> tuple[PreTrainedModel, Any]:
    """A speech encoder and its feature extractor from a local folder or hub id: the encoder of an
    encoder-decoder checkpoint (Whisper: `get_encoder()`), else the model itself (HuBERT, wav2vec 2.0)."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    encoder = model.get_encoder() if config.is_encoder_decoder else model
    return encoder, AutoFeatureExtractor.from_pretrained(path, trust_remote_code=trust_remote_code)


def encoder_class_name(encoder: nn.Module) -> str:
    """`module.Class` of a transformers encoder, as an export records it (`load_encoder_class` reads it)."""
    return f"{type(encoder).__module__}.{type(encoder).__qualname__}"


def load_encoder_class(name: str) -> type:
    """The class an export recorded with `encoder_class_name`; transformers classes only.

    Raises:
        ValueError: the name is not a transformers class.
    """
    module, _, cls = name.rpartition(".")
    if not module.startswith("transformers."):
        raise ValueError(f"audio encoder class {name!r} is not a transformers class; expected 'transformers.<...>'")
    return getattr(importlib.import_module(module), cls)
