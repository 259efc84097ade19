"""Full-size presets in the paper's shape. Creating one loads weights from the hub ids it names.

They are composed backbones (a timm vision encoder + a linear projector + an LLM), the
architecture of the paper's Figure 3; the projector starts from random weights and is trained.
"""

from __future__ import annotations

from typing import Any

from emoverse.backbones.composed import ComposedBackbone
from emoverse.backbones.registry import register_backbone

INTERN_VIT_448 = "vit_intern300m_patch14_448.ogvl_dist"


@register_backbone
def emoverse_4b(**kwargs: Any) -> ComposedBackbone:
    """EmoVerse-4B shape: InternViT-300M (448×448, frozen) → linear → Phi-3-mini (4k) with LoRA.

    The 32×32 patch grid is pooled 2×2 to 256 tokens per frame, as InternVL2's pixel shuffle does.
    """
    defaults: dict[str, Any] = dict(
        vision=INTERN_VIT_448, vision_pretrained=True, llm="microsoft/Phi-3-mini-4k-instruct",
        projector="linear", pool=2, dtype="bfloat16",
    )
    return ComposedBackbone(**{**defaults, **kwargs})


@register_backbone
def emoverse_8b(**kwargs: Any) -> ComposedBackbone:
    """EmoVerse-8B shape: InternViT-300M → linear → InternLM-2.5-7B-chat (ships its own code)."""
    defaults: dict[str, Any] = dict(
        vision=INTERN_VIT_448, vision_pretrained=True, llm="internlm/internlm2_5-7b-chat",
        projector="linear", pool=2, dtype="bfloat16", trust_remote_code=True,
    )
    return ComposedBackbone(**{**defaults, **kwargs})
