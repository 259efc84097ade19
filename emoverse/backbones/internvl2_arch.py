"""InternVL2's architecture numbers, in one place: the presets build from them and `emoverse.memory`
estimates from them.

Each dict holds keyword arguments of a transformers configuration, copied from the released
`config.json` files of OpenGVLab/InternVL2-4B (Phi-3-mini-128k-instruct, vocabulary 32,020) and
OpenGVLab/InternVL2-8B (InternLM2.5-7B-chat, vocabulary 92,553, expressed as the Llama architecture
it is equivalent to once `internvl2_convert` splits its fused `wqkv`). Plain data: importing this
file imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

INTERN_VIT_300M: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=[448, 448],
    patch_size=[14, 14], attention_bias=True, use_qk_norm=False, norm_type="layer_norm",
    use_absolute_position_embeddings=True)
"""InternViT-300M-448px (qkv_bias true, no QK norm, layer scale): `InternVLVisionConfig` arguments."""

PHI3_MINI_128K: dict[str, Any] = dict(
    model_type="phi3", vocab_size=32020, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=131072,
    original_max_position_embeddings=4096, tie_word_embeddings=False)
"""InternVL2-4B's language model: fused `qkv_proj` and `gate_up_proj`."""

INTERNLM2_5_7B: dict[str, Any] = dict(
    model_type="llama", vocab_size=92553, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, tie_word_embeddings=False)
"""InternVL2-8B's language model as Llama: separate q/k/v/o and gate/up/down projections."""

DOWNSAMPLE_RATIO = 0.5  # InternVL2's pixel shuffle: 4 patch tokens → 1 visual token, 4x the channels
TOKENS_PER_TILE = 256  # (448 / 14)² patches, pixel shuffle 0.5 → 256 visual tokens per 448×448 tile

TEXT_CONFIGS: dict[str, dict[str, Any]] = {"emoverse_4b": PHI3_MINI_128K, "emoverse_8b": INTERNLM2_5_7B}
IMAGE_CONTEXT_ID = {"emoverse_4b": 32013, "emoverse_8b": 92546}
"""`<IMG_CONTEXT>` in the released tokenizers."""
