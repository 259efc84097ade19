"""More tiny transformers-native families (random weights, built offline), each chosen for a mechanism
of the backbone contract it exercises (docs/backbones.md has the table):

- Qwen2.5-VL, Qwen3-VL (a merger plus DeepStack mergers), Qwen3-VL-MoE (fused experts, a router):
  the projector inside the vision encoder, M-RoPE, LoRA targets in a mixture-of-experts block;
- Gemma3 (`token_type_ids` marking image tokens, the end-of-turn marker `<end_of_turn>`; its projection opened);
- PaliGemma (its processor adds `labels`; `token_type_ids` 0 is the bidirectional prefix, 1 the
  causal suffix that generation extends);
- Mllama (a per-token, per-image, per-tile `cross_attention_mask`; its cross-attention gates opened, as trained);
- GLM-4V (system and assistant content read as strings; the template writes no end-of-turn marker,
  the stop comes from `generation_config`);
- LLaVA-NeXT-Video (a Vicuna-style template that ends an answer with a space, `</s>` from eos).

Each is the real architecture class with a small config, the family's own processor class and a chat
template in the shape of the official one; `generation_config.eos_token_id` is what the released
checkpoints declare. Frames are small (32 px for most, 16 px patches where the family needs them).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf

from emoverse.backbones.hf_vlm import HFVisionLanguageBackbone
from emoverse.backbones.registry import register_backbone
from emoverse.backbones.tiny import tiny_text_config, tiny_tokenizer
from emoverse.backbones.tiny_hf import _seeded

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)

QWEN_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Qwen2-VL/2.5-VL/3-VL's template shape: `<|im_start|>role ... <|im_end|>`, string or list content."""

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<start_of_image>' }}{% elif c['type'] == 'text' %}{{ c['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma 3's template shape (`<start_of_turn>model`, `<end_of_turn>`; the official one folds a system
turn into the first user turn, which this one leaves out)."""

PALIGEMMA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\n' }}"
    "{% endif %}{% endfor %}"
)
"""PaliGemma's prompt shape (`<image>…<bos>prefix\n`, then the suffix and `<eos>`); the processor inserts
`<bos>` after the image tokens."""

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|image|>' }}{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
"""Llama 3.2 Vision's template shape (`<|eot_id|>` ends a turn)."""

GLM4V_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}{{ '<|' + m['role'] + '|>\n' }}"
    "{% if m['role'] == 'user' %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""GLM-4.1V's template shape: user content as parts, system and assistant content as a string, and
nothing after an answer (the model ends it with `<|user|>`, one of `generation_config.eos_token_id`)."""

VICUNA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() + ': ' }}{% endif %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""LLaVA-NeXT-Video's Vicuna-style template, as released: an answer ends with a space, never `</s>`."""


def _text(vocab: int, hidden: int, layers: int, **fields: Any) -> dict[str, Any]:
    return {**tiny_text_config(vocab, hidden, layers), **fields}


def _generation_eos(model: Any, *eos: int) -> Any:
    model.generation_config.eos_token_id = list(eos)
    return model


def _mrope_section(head_dim: int) -> list[int]:
    section = [head_dim // 8, head_dim // 8 + (head_dim // 2 - 3 * (head_dim // 8)) // 2]
    return [*section, head_dim // 2 - sum(section)]


def _qwen_tokenizer() -> Any:
    tok = tiny_tokenizer(extra_tokens=("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>",
                                       "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"))
    tok.eos_token = "<|im_end|>"
    return tok


def _qwen_ids(tok: Any) -> dict[str, int]:
    ids = tok.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _qwen_processor(cls: Any, video_cls: Any, tok: Any, patch: int) -> Any:
    sizes = dict(patch_size=patch, merge_size=2, temporal_patch_size=2)
    side = 2 * patch
    return cls(image_processor=tf.Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=4 * side * side, **sizes),
               tokenizer=tok, video_processor=video_cls(**sizes), chat_template=QWEN_TEMPLATE)


def _qwen_backbone(model_cls: Any, config: Any, tok: Any, processor: Any, seed: int,
                   **kwargs: Any) -> HFVisionLanguageBackbone:
    ids = tok.convert_tokens_to_ids
    model = _seeded(seed, lambda: _generation_eos(model_cls(config), ids("<|im_end|>"), ids("<|endoftext|>")))
    return HFVisionLanguageBackbone(model, processor, **kwargs)


@register_backbone
def tiny_qwen2_5_vl(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Qwen2.5-VL: windowed-attention ViT with a 2×2 patch merger (`visual.merger`) → Qwen2 with M-RoPE."""
    tok = _qwen_tokenizer()
    config = tf.Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1]),
        text_config=dict(model_type="qwen2_5_vl_text", **tiny_text_config(len(tok), hidden, layers),
                         rope_parameters={"rope_type": "default", "mrope_section": _mrope_section(hidden // 4),
                                          "rope_theta": 10000.0}),
        tie_word_embeddings=True, **_qwen_ids(tok),
    )
    processor = _qwen_processor(tf.Qwen2_5_VLProcessor, tf.Qwen2VLVideoProcessor, tok, 8)
    return _qwen_backbone(tf.Qwen2_5_VLForConditionalGeneration, config, tok, processor, seed, **kwargs)


def _qwen3_text(tok: Any, hidden: int, layers: int, **moe: Any) -> dict[str, Any]:
    head_dim = hidden // 4
    return dict(**tiny_text_config(len(tok), hidden, layers), head_dim=head_dim, **moe,
                rope_parameters={"rope_type": "default", "mrope_section": _mrope_section(head_dim),
                                 "mrope_interleaved": True, "rope_theta": 10000.0})


_QWEN3_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8, spatial_merge_size=2,
                     temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0])


@register_backbone
def tiny_qwen3_vl(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Qwen3-VL: ViT → `visual.merger` plus DeepStack mergers (features of an inner ViT block added to
    the first decoder layers) → Qwen3 with interleaved M-RoPE."""
    tok = _qwen_tokenizer()
    config = tf.Qwen3VLConfig(vision_config=dict(**_QWEN3_VISION, out_hidden_size=hidden),
                              text_config=_qwen3_text(tok, hidden, layers), tie_word_embeddings=True, **_qwen_ids(tok))
    processor = _qwen_processor(tf.Qwen3VLProcessor, tf.Qwen3VLVideoProcessor, tok, 8)
    return _qwen_backbone(tf.Qwen3VLForConditionalGeneration, config, tok, processor, seed, **kwargs)


@register_backbone
def tiny_qwen3_vl_moe(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Qwen3-VL-MoE: as `tiny_qwen3_vl` with a mixture-of-experts MLP (4 fused experts, top 2, a router)."""
    tok = _qwen_tokenizer()
    text = _qwen3_text(tok, hidden, layers, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden,
                       decoder_sparse_step=1)
    config = tf.Qwen3VLMoeConfig(vision_config=dict(**_QWEN3_VISION, out_hidden_size=hidden), text_config=text,
                                 tie_word_embeddings=True, **_qwen_ids(tok))
    processor = _qwen_processor(tf.Qwen3VLProcessor, tf.Qwen3VLVideoProcessor, tok, 8)
    return _qwen_backbone(tf.Qwen3VLMoeForConditionalGeneration, config, tok, processor, seed, **kwargs)


def _gemma_tokenizer(named: dict[str, str] | None = None) -> Any:
    tok = tiny_tokenizer(extra_tokens=("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), named_tokens=named)
    tok.bos_token, tok.eos_token = "<bos>", "<eos>"
    return tok


def _gemma_text(tok: Any, hidden: int, layers: int) -> dict[str, Any]:
    return _text(len(tok), hidden, layers, head_dim=hidden // 4, bos_token_id=tok.bos_token_id,
                 eos_token_id=tok.eos_token_id)


@register_backbone
def tiny_gemma3(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Gemma 3: SigLIP ViT → average pooling + RMSNorm + projection (`multi_modal_projector`, 4 tokens
    per frame) → Gemma 3 (image tokens attend bidirectionally, marked by `token_type_ids`)."""
    tok = _gemma_tokenizer({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                            "image_token": "<image_soft_token>"})
    ids = tok.convert_tokens_to_ids
    config = tf.Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", image_size=32, patch_size=8, **_VISION),
        text_config=dict(model_type="gemma3_text", **_gemma_text(tok, hidden, layers), sliding_window=64,
                         query_pre_attn_scalar=hidden // 4),
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), tie_word_embeddings=True,
    )
    processor = tf.Gemma3Processor(
        image_processor=tf.Gemma3ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
        image_seq_length=4, chat_template=GEMMA_TEMPLATE,
    )
    model = _seeded(seed, lambda: _generation_eos(_open_projection(tf.Gemma3ForConditionalGeneration(config)),
                                                   ids("<eos>"), ids("<end_of_turn>")))
    return HFVisionLanguageBackbone(model, processor, **kwargs)


def _open_projection(model: Any) -> Any:
    # transformers initialises Gemma 3's projection to zeros: every frame would become the same zero embedding, so
    # no check could see what the frames do; a released checkpoint's is trained. The text init's scale stands in
    # (the features are RMS-normalised first, so the visual tokens come out near the text embeddings' scale).
    projector = model.model.multi_modal_projector
    torch.nn.init.normal_(projector.mm_input_projection_weight, std=model.config.text_config.initializer_range)
    return model


@register_backbone
def tiny_paligemma(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny PaliGemma: SigLIP ViT → linear `multi_modal_projector` → Gemma; the prompt (image tokens and
    prefix) attends bidirectionally, the answer causally (`token_type_ids` 1)."""
    tok = _gemma_tokenizer()
    ids = tok.convert_tokens_to_ids
    config = tf.PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=32, patch_size=8, projection_dim=hidden,
                           **_VISION),
        text_config=dict(model_type="gemma", **_gemma_text(tok, hidden, layers)),
        image_token_index=ids("<image>"), projection_dim=hidden, hidden_size=hidden, vocab_size=len(tok),
        tie_word_embeddings=True,
    )
    processor = tf.PaliGemmaProcessor(image_processor=tf.SiglipImageProcessor(size={"height": 32, "width": 32},
                                                                              image_seq_length=16),
                                      tokenizer=tok, chat_template=PALIGEMMA_TEMPLATE)
    model = _seeded(seed, lambda: _generation_eos(tf.PaliGemmaForConditionalGeneration(config), ids("<eos>")))
    return HFVisionLanguageBackbone(model, processor, **kwargs)


@register_backbone
def tiny_mllama(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Mllama (Llama 3.2 Vision): tiled ViT → linear `multi_modal_projector` → cross-attention layers of a
    Llama decoder; which tokens see which frame is the per-token `cross_attention_mask` [B, T, frames, tiles]."""
    tok = tiny_tokenizer(extra_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                       "<|image|>"))
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    ids = tok.convert_tokens_to_ids
    config = tf.MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=2, image_size=16, patch_size=8, max_num_tiles=2, vision_output_dim=64,
                           intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]]),
        text_config=_text(len(tok) + 8, hidden, layers + 1, cross_attention_layers=[1],
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=ids("<|image|>"),
    )
    processor = tf.MllamaProcessor(
        image_processor=tf.MllamaImageProcessor(size={"height": 16, "width": 16}, max_image_tiles=2),
        tokenizer=tok, chat_template=LLAMA3_TEMPLATE,
    )
    model = _seeded(seed, lambda: _generation_eos(_open_gates(tf.MllamaForConditionalGeneration(config)),
                                                   ids("<|eot_id|>")))
    return HFVisionLanguageBackbone(model, processor, **kwargs)


def _open_gates(model: Any) -> Any:
    # transformers initialises Mllama's cross-attention gates to 0 as pretraining starts (tanh(0) = 0): the frames
    # would not reach the language model and the projector would get zero gradients, never training. A released
    # checkpoint has them trained open; tanh(1) = 0.76 stands in.
    for layer in model.model.language_model.layers:
        if isinstance(layer, tf.models.mllama.modeling_mllama.MllamaCrossAttentionDecoderLayer):
            torch.nn.init.ones_(layer.cross_attn_attn_gate)
            torch.nn.init.ones_(layer.cross_attn_mlp_gate)
    return model


@register_backbone
def tiny_glm4v(hidden: int = 64, layers: int = 2, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny GLM-4.1V: ViT → 2×2 convolution + `visual.merger` → GLM-4 with M-RoPE; string content for system
    and assistant turns, nothing after an answer."""
    tok = tiny_tokenizer(extra_tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
                                       "<|observation|>", "<|endoftext|>", "<|begin_of_image|>", "<|end_of_image|>",
                                       "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"))
    tok.eos_token = "<|endoftext|>"
    ids = tok.convert_tokens_to_ids
    config = tf.Glm4vConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, image_size=32, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden),
        text_config=_text(len(tok), hidden, layers, eos_token_id=tok.eos_token_id,
                          rope_parameters={"rope_type": "default", "mrope_section": _mrope_section(hidden // 8),
                                           "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"), image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"), video_end_token_id=ids("<|end_of_video|>"),
        tie_word_embeddings=True,
    )
    sizes = dict(patch_size=8, merge_size=2, temporal_patch_size=2)
    processor = tf.Glm4vProcessor(
        image_processor=tf.Glm4vImageProcessor(size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}, **sizes),
        tokenizer=tok, video_processor=tf.Glm4vVideoProcessor(**sizes), chat_template=GLM4V_TEMPLATE,
    )
    model = _seeded(seed, lambda: _generation_eos(tf.Glm4vForConditionalGeneration(config), ids("<|endoftext|>"),
                                                   ids("<|user|>"), ids("<|observation|>")))
    return HFVisionLanguageBackbone(model, processor, **kwargs)


@register_backbone
def tiny_llava_next_video(hidden: int = 64, layers: int = 2, seed: int = 0,
                          **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny LLaVA-NeXT-Video: CLIP ViT with "anyres" tiles → MLP → Llama, Vicuna-style prompts."""
    tok = tiny_tokenizer(extra_tokens=("<s>", "</s>", "<video>"))
    tok.bos_token, tok.eos_token = "<s>", "</s>"
    ids = tok.convert_tokens_to_ids
    grid = [[32, 32], [32, 64], [64, 32]]
    config = tf.LlavaNextVideoConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=32, patch_size=8, **_VISION),
        text_config=_text(len(tok), hidden, layers, model_type="llama", eos_token_id=tok.eos_token_id),
        image_token_index=ids("<image>"), video_token_index=ids("<video>"), image_grid_pinpoints=grid,
        image_seq_length=16, video_seq_length=4, tie_word_embeddings=True,
    )
    square = {"height": 32, "width": 32}
    processor = tf.LlavaNextVideoProcessor(
        image_processor=tf.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size=square,
                                                   image_grid_pinpoints=grid),
        video_processor=tf.LlavaNextVideoVideoProcessor(size={"shortest_edge": 32}, crop_size=square),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=VICUNA_TEMPLATE,
    )
    model = _seeded(seed, lambda: _generation_eos(tf.LlavaNextVideoForConditionalGeneration(config), ids("</s>")))
    return HFVisionLanguageBackbone(model, processor, **kwargs)
