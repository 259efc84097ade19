"""Tiny Gemma 3n (random weights, built offline): the family whose projector is `embed_vision`, beside a
MobileNetV5 vision tower (timm, through transformers' `TimmWrapperModel`), an audio tower and its own
`embed_audio`, with a language model that adds AltUp, LAuReL, per-layer inputs and KV sharing to Gemma's.

What makes it tiny while keeping the architecture: the vision tower is timm's `MobileNetV5Encoder` built by
`mobilenetv5_300m_enc` with two short stages of its block kinds (an edge residual, universal inverted residuals,
a mobile multi-query attention block) instead of its 80 blocks, and a multi-scale fusion adapter pooled to 2×2
(4 soft tokens per frame, 256 in the released model). It is registered in timm as `emoverse_tiny_mobilenetv5_enc`
(the name the config saves), because the blocks cannot travel in `vision_config.model_args`: timm's builder
edits the block arguments it is given in place (pops `block_type`, adds layer classes), which would leave the
config unsaveable and unbuildable a second time (a saved tiny Gemma 3n therefore loads where emoverse's
backbones are imported, which `HFVisionLanguageBackbone` does). The adapter's 2048 output channels are fixed by timm
(`MobileNetV5Encoder.num_features`), so the vision `hidden_size` stays 2048. The token ids keep the released
layout: text ids first, then the vision ids (`<end_of_image>`, `<image_soft_token>`) from
`vision_config.vocab_offset`, then the audio ids (`<end_of_audio>`, `<audio_soft_token>`) from
`audio_config.vocab_offset`; `Gemma3nModel.forward` embeds every id at or past the vision offset with
`embed_vision` / `embed_audio`, not the text table.
"""

from __future__ import annotations

from typing import Any

import transformers as tf
from timm.models import register_model
from timm.models._efficientnet_builder import decode_arch_def  # what timm's own mobilenetv5.py decodes with
from timm.models.mobilenetv5 import MobileNetV5Encoder, mobilenetv5_300m_enc
from transformers import PreTrainedTokenizerFast

from emoverse.backbones.hf_vlm import HFVisionLanguageBackbone
from emoverse.backbones.registry import register_backbone
from emoverse.backbones.tiny import tiny_tokenizer
from emoverse.backbones.tiny_hf import _seeded
from emoverse.backbones.tiny_hf_families import _gemma_text, _generation_eos

__all__ = ["emoverse_tiny_mobilenetv5_enc", "tiny_gemma3n"]  # timm's register_model appends to a module's __all__

GEMMA3N_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% else %}{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'audio' %}{{ '<audio_soft_token>' }}{% elif c['type'] == 'image' %}{{ '<image_soft_token>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma 3n's template shape: a system turn folded into the first user turn, `<start_of_turn>model`,
`<end_of_turn>`, and the soft tokens themselves as placeholders (the processor wraps each in
`<start_of_image>`…`<end_of_image>`; Gemma 3's template writes `<start_of_image>` instead)."""

_TEXT_SPECIALS = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<start_of_audio>")
_VISION_IDS = ("<end_of_image>", "<image_soft_token>")
_AUDIO_IDS = ("<end_of_audio>", "<audio_soft_token>")

MOBILENETV5_TINY = [["er_r1_k3_s2_e4_c16"],
                    ["uir_r1_a3_k5_s2_e2_c32", "mqa_r1_k3_h2_s1_d16_c32", "uir_r1_a0_k0_s1_e2_c32"]]
"""Two stages of MobileNetV5's block kinds (timm's arch-def strings; strides 2 and 2 after the stem). A stage
ends with a residual block, as in the released one: timm reads a stage's output channels from its last block,
which a multi-query attention block does not expose."""


@register_model
def emoverse_tiny_mobilenetv5_enc(pretrained: bool = False, **kwargs: Any) -> MobileNetV5Encoder:
    """timm's Gemma 3n encoder (`mobilenetv5_300m_enc`) with `MOBILENETV5_TINY`, an 8-channel stem and a 2×2
    fusion output: the released architecture's components at a few hundred thousand parameters."""
    kwargs = {"stem_size": 8, "msfa_output_resolution": 2, **kwargs}
    return mobilenetv5_300m_enc(pretrained=pretrained, block_args=decode_arch_def(MOBILENETV5_TINY), **kwargs)


def _gemma3n_tokenizer() -> PreTrainedTokenizerFast:
    # the ids must fall in the released layout (text < vision offset <= vision < audio offset <= audio), so the
    # tokens are added in that order first and named afterwards (named tokens would be added first)
    base = tiny_tokenizer(extra_tokens=(*_TEXT_SPECIALS, *_VISION_IDS, *_AUDIO_IDS))
    named = dict(boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>",
                 boa_token="<start_of_audio>", eoa_token="<end_of_audio>", audio_token="<audio_soft_token>")
    return PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, pad_token="<|pad|>", bos_token="<bos>",
                                   eos_token="<eos>", extra_special_tokens=named)


@register_backbone
def tiny_gemma3n(hidden: int = 64, layers: int = 3, seed: int = 0, **kwargs: Any) -> HFVisionLanguageBackbone:
    """Tiny Gemma 3n: MobileNetV5 (timm) → `embed_vision` (RMSNorm + projection, 4 soft tokens per 32 px frame)
    → Gemma 3n (AltUp, LAuReL, per-layer inputs; with 3 layers or more the last ones reuse earlier KV)."""
    tok = _gemma3n_tokenizer()
    ids = tok.convert_tokens_to_ids
    vision_offset, audio_offset = ids(_VISION_IDS[0]), ids(_AUDIO_IDS[0])
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    text = _gemma_text(tok, hidden, layers)
    text.update(model_type="gemma3n_text", vocab_size_per_layer_input=vision_offset, intermediate_size=2 * hidden,
                hidden_size_per_layer_input=8, laurel_rank=4, altup_num_inputs=4, sliding_window=64,
                layer_types=types, num_kv_shared_layers=max(layers - 2, 0),
                activation_sparsity_pattern=[0.95] + [0.0] * (layers - 1))
    config = tf.Gemma3nConfig(
        text_config=text,
        vision_config=dict(model_type="gemma3n_vision", architecture="emoverse_tiny_mobilenetv5_enc",
                           hidden_size=2048, vocab_offset=vision_offset, vocab_size=len(_VISION_IDS)),
        # the audio tower is small too; a clip keeps the released 188 soft tokens (audio_soft_tokens_per_image)
        audio_config=dict(model_type="gemma3n_audio", hidden_size=32, vocab_offset=audio_offset,
                          vocab_size=len(_AUDIO_IDS), conf_num_attention_heads=2, conf_num_hidden_layers=1,
                          sscp_conv_channel_size=[8, 4]),
        vision_soft_tokens_per_image=4, boi_token_id=ids("<start_of_image>"), eoi_token_id=ids("<end_of_image>"),
        image_token_id=ids("<image_soft_token>"), boa_token_id=ids("<start_of_audio>"),
        eoa_token_id=ids("<end_of_audio>"), audio_token_id=ids("<audio_soft_token>"), tie_word_embeddings=True,
    )
    # pixels in [0, 1], unnormalised: timm's configuration of the encoder declares mean 0 and std 1
    processor = tf.Gemma3nProcessor(
        feature_extractor=tf.Gemma3nAudioFeatureExtractor(),
        image_processor=tf.SiglipImageProcessor(size={"height": 32, "width": 32}, do_normalize=False),
        tokenizer=tok, image_seq_length=4, chat_template=GEMMA3N_TEMPLATE,
    )
    # the released generation config declares eos_token_id [1, 106]: <eos> and <end_of_turn>
    model = _seeded(seed, lambda: _generation_eos(tf.Gemma3nForConditionalGeneration(config), ids("<eos>"),
                                                   ids("<end_of_turn>")))
    return HFVisionLanguageBackbone(model, processor, **kwargs)
