"""The paper's models build offline (meta device) with the released architectures and counts."""

from __future__ import annotations

import pytest

from emoverse.backbones import create_backbone

R = 8  # the paper's LoRA rank


def lora_count(hidden: int, intermediate: int, layers: int, q: int, kv: int) -> int:
    """LoRA r=8 parameters on every linear layer of a decoder stack: r * (in + out) each."""
    per_layer = R * (hidden + q + 2 * kv) + R * (q + hidden) + R * (hidden + 2 * intermediate) + R * (intermediate + hidden)
    return layers * per_layer


# name: (total parameters, LoRA parameters, projector parameters)
RELEASED = {
    # InternVL2-4B: 4,146,855,936 parameters in the released safetensors; Phi-3 has fused qkv and gate_up
    "emoverse_4b": (4_146_855_936, lora_count(3072, 8192, 32, 3072, 3072), 4096 * 2 + 4096 * 3072 + 3072 + 3072 * 3072 + 3072),
    # InternVL2-8B: 8.08 B; InternLM2.5-7B's wqkv split into q/k/v (8 KV heads of 128)
    "emoverse_8b": (8_075_365_376, None, 4096 * 2 + 4096 * 4096 + 4096 + 4096 * 4096 + 4096),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_paper_presets_match_the_released_models(name: str) -> None:
    bb = create_backbone(name, pretrained=False)
    total, lora, projector = RELEASED[name]
    assert sum(p.numel() for p in bb.parameters()) == total
    assert sum(p.numel() for p in bb.part("projector").parameters()) == projector
    assert next(bb.parameters()).is_meta  # no memory, no download
    bb.add_lora(R, 32, 0.05)
    bb.set_trainable(["projector", "lora"])
    trained = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    if lora is None:  # separate q/k/v/o and gate/up/down: r * (in + out) per projection
        lora = 32 * R * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))
    assert trained == lora + projector
    assert bb.processor.processor.image_seq_length == 256  # 448 px tile → 32×32 patches → pixel shuffle 0.5


def test_pretrained_needs_a_converted_folder() -> None:
    with pytest.raises(ValueError, match=r"emoverse_4b\(pretrained=True\) needs path="):
        create_backbone("emoverse_4b")
