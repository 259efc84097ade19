"""Tiny backbones that hear the speaker (random weights, built offline), registered like every preset.

- `tiny_audio`: the composed `tiny` (timm ViT → linear → Llama) with a transformers speech encoder beside it
  (Whisper's encoder by default, or HuBERT) and its own linear projector, 8 audio tokens per second;
- `tiny_qwen2_audio`: Qwen2-Audio (Whisper-style encoder → `multi_modal_projector` → Qwen2), audio only;
- `tiny_qwen2_5_omni`: the Qwen2.5-Omni *thinker* (the text-generating half; no speech "talker"), which takes
  images, video and audio at once: a windowed ViT with `visual.merger`, a Whisper-style encoder ending in its own
  projection `audio_tower.proj`, and Qwen2 with time-aligned M-RoPE.

Each is the real architecture class with a small config, the family's own processor class (the feature extractor
is `WhisperFeatureExtractor`, as released, with 16 mel bins and a 2 s window instead of 128 and 30 s so the
encoder stays tiny), a chat template in the shape of the official one, and the `generation_config.eos_token_id`
the released checkpoints declare. 25 audio tokens per second, as released.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import transformers as tf
from torch import nn
from torch.nn.utils import parametrize
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from emoverse.backbones.composed import ComposedBackbone
from emoverse.backbones.composed_audio import AUDIO_TOKEN
from emoverse.backbones.hf_vlm import HFVisionLanguageBackbone
from emoverse.backbones.registry import register_backbone
from emoverse.backbones.tiny import _tiny_llm, _tiny_vision_kwargs, tiny_text_config, tiny_tokenizer
from emoverse.backbones.tiny_hf import _seeded

AUDIO_WINDOW_S = 2
"""Seconds of audio the tiny feature extractors keep (the released ones: 30); a longer clip is cut to it."""

MEL_BINS = 16

QWEN2_AUDIO_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-Audio-7B-Instruct's template as released: an audio part is one that has an `audio` key (not its type)."""

QWEN2_5_OMNI_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5-Omni's template shape (images, audio and video placeholders by type or key)."""

_QWEN_TURNS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _audio_encoder(out: int | None = None) -> dict[str, Any]:
    extra = {} if out is None else {"output_dim": out, "n_window": 50}
    # max_source_positions: the encoder's frames after its stride-2 convolution, 100 per second of mel frames
    return dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=MEL_BINS,
                max_source_positions=50 * AUDIO_WINDOW_S, **extra)


AUDIBLE_STD = 0.2
"""The std of a tiny audio encoder's random weights. transformers draws them at 0.02, which leaves the encoder's
output almost only its positional embeddings: on the demo AMT's voices, tiny_audio's pooled audio tokens differed
from clip to clip by 0.4 % of their magnitude, a frozen encoder a tiny model cannot learn sound through (audio-alone
training stayed at the majority answers). At 0.2 they differ by 28 % (a linear probe of the tokens reads the
sentiment's sign at 0.76 on the demo validation set, majority 0.56)."""


def _audible(model: Any, encoder: str | None = None, projector: str | None = None) -> Any:
    """`model` with the weights of its audio encoder (the module at `encoder`, or the model) redrawn at
    `AUDIBLE_STD` (seeded by the caller), so that different clips give different audio tokens; a projector inside
    the encoder (`projector`, its name there) keeps its init (it maps to the text embeddings' scale)."""
    module = model.get_submodule(encoder) if encoder else model
    for name, sub in module.named_modules():
        if projector and (name == projector or name.startswith(f"{projector}.")):
            continue
        if isinstance(sub, (nn.Linear, nn.Conv1d)) and not parametrize.is_parametrized(sub):
            nn.init.normal_(sub.weight, std=AUDIBLE_STD)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    return model


def _feature_extractor() -> tf.WhisperFeatureExtractor:
    return tf.WhisperFeatureExtractor(feature_size=MEL_BINS, chunk_length=AUDIO_WINDOW_S, return_attention_mask=True)


def _eos(model: Any, tok: Any) -> Any:
    ids = tok.convert_tokens_to_ids
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    return model


@register_backbone
def tiny_qwen2_audio(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Qwen2-Audio: Whisper-style encoder (log-mel, 25 tokens per second) → linear `multi_modal_projector` →
    Qwen2. It hears and reads; it takes no frames."""
    tok = tiny_tokenizer(extra_tokens=(*_QWEN_TURNS, "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"))
    tok.eos_token = "<|im_end|>"
    config = tf.Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", **_audio_encoder()),
        text_config=dict(model_type="qwen2", **tiny_text_config(len(tok), hidden, layers)),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"), tie_word_embeddings=True,
    )
    processor = tf.Qwen2AudioProcessor(feature_extractor=_feature_extractor(), tokenizer=tok,
                                       chat_template=QWEN2_AUDIO_TEMPLATE)
    model = _seeded(seed, lambda: _audible(_eos(tf.Qwen2AudioForConditionalGeneration(config), tok), "model.audio_tower"))
    return HFVisionLanguageBackbone(model, processor, **kwargs)


@register_backbone
def tiny_qwen2_5_omni(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Qwen2.5-Omni thinker: windowed ViT with `visual.merger` (frames as images or as one video, two frames
    per temporal patch) and a Whisper-style encoder ending in `audio_tower.proj` → Qwen2 with time-aligned M-RoPE."""
    named = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
             "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
             "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
    tok = tiny_tokenizer(extra_tokens=_QWEN_TURNS, named_tokens=named)
    tok.eos_token = "<|im_end|>"
    ids = tok.convert_tokens_to_ids
    head_dim = hidden // 4
    section = [head_dim // 8, head_dim // 8 + (head_dim // 2 - 3 * (head_dim // 8)) // 2]
    config = tf.Qwen2_5OmniThinkerConfig(
        audio_config=_audio_encoder(out=hidden),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1]),
        text_config=dict(**tiny_text_config(len(tok), hidden, layers),
                         rope_parameters={"rope_type": "default", "mrope_section": [*section, head_dim // 2 - sum(section)],
                                          "rope_theta": 10000.0}),
        audio_token_index=ids("<|AUDIO|>"), image_token_index=ids("<|IMAGE|>"), video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"), audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"), tie_word_embeddings=True,
    )
    pixels = dict(min_pixels=16 * 16, max_pixels=64 * 64, patch_size=8, merge_size=2, temporal_patch_size=2)
    processor = tf.Qwen2_5OmniProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**pixels),
        video_processor=tf.Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True),
        feature_extractor=_feature_extractor(), tokenizer=tok, chat_template=QWEN2_5_OMNI_TEMPLATE,
    )
    model = _seeded(seed, lambda: _audible(_eos(tf.Qwen2_5OmniThinkerForConditionalGeneration(config), tok),
                                           "model.audio_tower", projector="proj"))
    return HFVisionLanguageBackbone(model, processor, **kwargs)


def _speech_encoder(kind: Literal["whisper", "hubert"]) -> tuple[Any, Any]:
    width = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if kind == "whisper":
        config = tf.WhisperConfig(num_mel_bins=MEL_BINS, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                                  encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                                  max_source_positions=50 * AUDIO_WINDOW_S, vocab_size=64, pad_token_id=0,
                                  bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)
        return _audible(WhisperEncoder(config)), _feature_extractor()
    if kind == "hubert":  # 320 samples per frame (50 per second) as released; no SpecAugment on a frozen encoder
        config = tf.HubertConfig(hidden_size=32, **width, conv_dim=(32, 32, 32), conv_stride=(5, 8, 8),
                                 conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                 apply_spec_augment=False, vocab_size=32)
        extractor = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                do_normalize=True, return_attention_mask=True)
        return _audible(tf.HubertModel(config)), extractor
    raise ValueError(f"audio_encoder={kind!r}; expected 'whisper' or 'hubert'")


@register_backbone
def tiny_audio(image_size: int = 64, hidden: int = 128, layers: int = 2, seed: int = 0,
               audio_encoder: Literal["whisper", "hubert"] = "whisper", **kwargs: Any) -> ComposedBackbone:
    """`tiny` that also hears: a 2-layer Whisper encoder (or HuBERT) → its own linear projector → the same tiny
    Llama, 8 audio tokens per second of sound."""
    tok = tiny_tokenizer(extra_tokens=(AUDIO_TOKEN,))
    kwargs.setdefault("audio_tokens_per_second", 8.0)
    with torch.random.fork_rng(devices=[]):  # the frozen weights are a function of `seed` alone
        torch.manual_seed(seed)
        encoder, extractor = _speech_encoder(audio_encoder)
        return ComposedBackbone(
            vision="vit_tiny_patch16_224", vision_kwargs=_tiny_vision_kwargs(image_size),
            llm=_tiny_llm("llama", len(tok), hidden, layers), tokenizer=tok, audio=encoder,
            audio_feature_extractor=extractor, **kwargs,
        )
