"""Tiny transformers-native vision-language models (random weights, built offline), one per family.

Each is the real architecture class with a small config, the family's own processor class and a
chat template that writes the family's image placeholder, so the same code path that serves a
downloaded checkpoint (`HFVisionLanguageBackbone("llava-hf/...")`) runs in tests and the quickstart.
Frames are 32×32 with 8×8 patches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as tf

from emoverse.backbones.hf_vlm import HFVisionLanguageBackbone
from emoverse.backbones.registry import register_backbone
from emoverse.backbones.tiny import tiny_text_config, tiny_tokenizer

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def chat_template(image: str, video: str | None = None) -> str:
    """The tiny chat template, rendering each `{"type": "image"}` content item as `image` (and, given `video`,
    each `{"type": "video"}` item as `video`)."""
    videos = "" if video is None else "{% elif c['type'] == 'video' %}{{ '" + video + "' }}"
    return (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' }}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ '" + image + "' }}" + videos + "{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    # the frozen weights are a function of `seed` alone, as for the composed tiny presets
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@register_backbone
def tiny_llava(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny LLaVA: CLIP ViT (16 tokens per frame, features of layer −2) → MLP → Llama."""
    tok = tiny_tokenizer()
    config = tf.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=32, patch_size=8, **_VISION),
        text_config=dict(model_type="llama", **tiny_text_config(len(tok), hidden, layers)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
    )
    processor = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=chat_template("<image>"),
    )
    return HFVisionLanguageBackbone(_seeded(seed, lambda: tf.LlavaForConditionalGeneration(config)), processor, **kwargs)


@register_backbone
def tiny_qwen2_vl(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Qwen2-VL: visual tokens per frame follow the frame size (2×2 patch merge), 3-D M-RoPE."""
    tok = tiny_tokenizer(extra_tokens=("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"))
    ids = tok.convert_tokens_to_ids
    head_dim = hidden // 4
    section = [head_dim // 8, head_dim // 8 + (head_dim // 2 - 3 * (head_dim // 8)) // 2]
    section.append(head_dim // 2 - sum(section))
    config = tf.Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, patch_size=8, spatial_merge_size=2,
                           temporal_patch_size=2, in_chans=3, mlp_ratio=2),
        text_config=dict(model_type="qwen2_vl_text", **tiny_text_config(len(tok), hidden, layers),
                         rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0}),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    sizes = dict(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32, max_pixels=64 * 64)
    processor = tf.Qwen2VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**sizes), tokenizer=tok,
        video_processor=tf.Qwen2VLVideoProcessor(**sizes, cap_pixels_per_frame=True),  # frames sized as images
        chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>",
                                    "<|vision_start|><|video_pad|><|vision_end|>"),
    )
    return HFVisionLanguageBackbone(_seeded(seed, lambda: tf.Qwen2VLForConditionalGeneration(config)), processor,
                                    **kwargs)


@register_backbone
def tiny_internvl(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny InternVL (the EmoVerse family): InternViT → pixel shuffle (0.5) + MLP → Qwen2, `<img>…</img>`."""
    tok = tiny_tokenizer(named_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                       "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    config = tf.InternVLConfig(
        vision_config=dict(image_size=[32, 32], patch_size=[8, 8], **_VISION),
        text_config=dict(model_type="qwen2", **tiny_text_config(len(tok), hidden, layers)),
        image_token_id=tok.context_image_token_id, downsample_ratio=0.5, tie_word_embeddings=True,
    )
    processor = tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=False),
        tokenizer=tok, video_processor=tf.InternVLVideoProcessor(), image_seq_length=4,
        chat_template=chat_template("<IMG_CONTEXT>"),
    )
    kwargs.setdefault("images_kwargs", {"crop_to_patches": False})
    return HFVisionLanguageBackbone(_seeded(seed, lambda: tf.InternVLForConditionalGeneration(config)), processor,
                                    **kwargs)


@register_backbone
def tiny_idefics3(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Idefics3 (SmolVLM's architecture): SigLIP-style ViT → pixel-shuffle connector → Llama."""
    rows = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
    tok = tiny_tokenizer(extra_tokens=("<fake_token_around_image>", "<global-img>", *rows))
    config = tf.Idefics3Config(
        vision_config=dict(image_size=32, patch_size=8, **_VISION),
        text_config=dict(model_type="llama", **tiny_text_config(len(tok), hidden, layers)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2, tie_word_embeddings=True,
    )
    processor = tf.Idefics3Processor(
        image_processor=tf.Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                                  max_image_size={"longest_edge": 32}),
        tokenizer=tok, image_seq_len=4, chat_template=chat_template("<image>"),
    )
    return HFVisionLanguageBackbone(_seeded(seed, lambda: tf.Idefics3ForConditionalGeneration(config)), processor,
                                    **kwargs)


@register_backbone
def tiny_llava_onevision(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny LLaVA-OneVision: SigLIP-style ViT with "anyres" tiling (a single frame becomes up to 4 tiles plus
    a base view; several frames keep their base view), MLP → Qwen2."""
    tok = tiny_tokenizer(extra_tokens=("<video>",))
    grid = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = tf.LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=32, patch_size=8, **_VISION),
        text_config=dict(model_type="qwen2", **tiny_text_config(len(tok), hidden, layers)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=grid, vision_feature_layer=-1, vision_feature_select_strategy="full",
        tie_word_embeddings=True,
    )
    square = {"height": 32, "width": 32}
    processor = tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessor(size=square, crop_size=square, image_grid_pinpoints=grid),
        tokenizer=tok, video_processor=tf.LlavaOnevisionVideoProcessor(size=square), num_image_tokens=16,
        vision_feature_select_strategy="full", chat_template=chat_template("<image>", "<video>"),
    )
    return HFVisionLanguageBackbone(_seeded(seed, lambda: tf.LlavaOnevisionForConditionalGeneration(config)),
                                    processor, **kwargs)
