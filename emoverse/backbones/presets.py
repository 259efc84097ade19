"""The paper's models: EmoVerse-4B = InternVL2-4B and EmoVerse-8B = InternVL2-8B, whole pretrained MLLMs.

Both are InternViT-300M-448px → pixel shuffle (0.5) + the trained MLP projector → an LLM, loaded
through the transformers-native InternVL classes from a checkpoint folder converted with
`emoverse.backbones.internvl2_convert`; with `pretrained=False` they build from the released
configurations with random weights, on the `meta` device by default, so their architecture and
parameter counts can be checked without a download (as timm's `create_model(pretrained=False)`).

The architecture numbers live in `emoverse.backbones.internvl2_arch`, which `emoverse.memory` reads
too, so the memory estimate counts the model the presets build.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf

from emoverse.backbones.hf_vlm import HFVisionLanguageBackbone
from emoverse.backbones.internvl2_arch import (
    DOWNSAMPLE_RATIO,
    IMAGE_CONTEXT_ID,
    INTERN_VIT_300M,
    TEXT_CONFIGS,
    TOKENS_PER_TILE,
)
from emoverse.backbones.registry import register_backbone
from emoverse.backbones.tiny import tiny_tokenizer
from emoverse.backbones.tiny_hf import chat_template


def internvl2_config(text: dict[str, Any], image_token_id: int) -> tf.InternVLConfig:
    """An InternVL2 configuration: InternViT-300M, pixel shuffle 0.5, MLP projector, `text` LLM."""
    return tf.InternVLConfig(vision_config=INTERN_VIT_300M, text_config=text, image_token_id=image_token_id,
                             downsample_ratio=DOWNSAMPLE_RATIO, projector_hidden_act="gelu", vision_feature_layer=-1,
                             vision_feature_select_strategy="default", tie_word_embeddings=False)


def _internvl2(name: str, text: dict[str, Any], pretrained: bool, path: str | None, device: str,
               **kwargs: Any) -> HFVisionLanguageBackbone:
    if pretrained:
        if path is None:
            raise ValueError(f"{name}(pretrained=True) needs path=<a transformers-native InternVL2 folder>: the "
                             "released checkpoints use remote code; convert one with `python -m "
                             "emoverse.backbones.internvl2_convert RELEASE_DIR OUT_DIR`, or pass pretrained=False "
                             "for random weights")
        kwargs.setdefault("dtype", "bfloat16")
        return HFVisionLanguageBackbone(path, **kwargs)
    # these act only while loading a checkpoint: refuse them here rather than build without them
    load_only = {k: kwargs.pop(k) for k in ("quantization", "trust_remote_code") if kwargs.get(k)}
    if load_only:
        settings = ", ".join(f"{k}={v!r}" for k, v in load_only.items())
        raise ValueError(f"{name}(pretrained=False, {settings}): these apply only when loading the converted "
                         f"checkpoint (pretrained=True, path=...); random weights are built unquantized with the "
                         f"native InternVL classes, which need no remote code. Drop them or load a checkpoint")
    for key in ("quantization", "trust_remote_code"):  # None / False: nothing asked
        kwargs.pop(key, None)
    config = internvl2_config(text, IMAGE_CONTEXT_ID[name])
    with torch.device(device):
        model = tf.InternVLForConditionalGeneration(config)
    dtype = kwargs.pop("dtype", None)
    if dtype:  # a built model keeps the dtype it was made in: cast it as a loaded one would be
        model.to(getattr(torch, dtype))
    # a stand-in tokenizer and processor with the released image tiling (448 px tiles, 256 tokens each)
    tok = tiny_tokenizer(named_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                       "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    processor = tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(size={"height": 448, "width": 448}, max_patches=12,
                                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        tokenizer=tok, video_processor=tf.InternVLVideoProcessor(), image_seq_length=TOKENS_PER_TILE,
        chat_template=chat_template("<IMG_CONTEXT>"),
    )
    return HFVisionLanguageBackbone(model, processor, **kwargs)


@register_backbone
def emoverse_4b(pretrained: bool = True, path: str | None = None, device: str = "meta",
                **kwargs: Any) -> HFVisionLanguageBackbone:
    """EmoVerse-4B: InternVL2-4B (InternViT-300M-448px → MLP → Phi-3-mini-128k), about 4.15 B parameters.

    Args:
        pretrained: load the converted checkpoint at `path`; False builds random weights.
        path: a transformers-native InternVL2-4B folder (converted from OpenGVLab/InternVL2-4B).
        device: where `pretrained=False` builds the weights ("meta": shapes only, no memory).
        kwargs: `HFVisionLanguageBackbone` arguments (dtype, quantization, max_length, ...).
    """
    return _internvl2("emoverse_4b", TEXT_CONFIGS["emoverse_4b"], pretrained, path, device, **kwargs)


@register_backbone
def emoverse_8b(pretrained: bool = True, path: str | None = None, device: str = "meta",
                **kwargs: Any) -> HFVisionLanguageBackbone:
    """EmoVerse-8B: InternVL2-8B (InternViT-300M-448px → MLP → InternLM2.5-7B-chat), about 8.08 B parameters.

    Args: as `emoverse_4b`, with `path` a converted OpenGVLab/InternVL2-8B folder.
    """
    return _internvl2("emoverse_8b", TEXT_CONFIGS["emoverse_8b"], pretrained, path, device, **kwargs)
