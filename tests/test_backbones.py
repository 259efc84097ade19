"""The backbone registry and every registered tiny backbone (forward + backward, like timm's test)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from emoverse.backbones import Backbone, create_backbone, list_backbones
from emoverse.backbones.tiny import tiny_tokenizer
from emoverse.lora import add_lora, set_trainable

TINY = list_backbones("tiny*")


def test_registry_lists_presets() -> None:
    names = list_backbones()
    assert {"tiny", "tiny_qwen2_mlp", "emoverse_4b", "emoverse_8b"} <= set(names)
    assert names == sorted(names)


def test_unknown_backbone_lists_known() -> None:
    with pytest.raises(KeyError, match="unknown backbone 'nope'.*tiny"):
        create_backbone("nope")


def test_overrides_reach_the_preset() -> None:
    small = create_backbone("tiny", image_size=32, hidden=64)
    assert small.processor.image_size == 32
    assert small.processor.tokens_per_image == 4
    assert small.llm.config.hidden_size == 64


def test_tokenizer_is_deterministic_and_has_a_chat_template() -> None:
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = a.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert a.decode(a("The person says: 'joy'")["input_ids"]) == "The person says: 'joy'"


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    bb: Backbone = create_backbone(name)
    add_lora(bb, r=4, alpha=16, dropout=0.0)
    set_trainable(bb, ["projector", "lora"])
    p = bb.processor
    px = p.pixel_values([Image.new("RGB", (80, 50), "red"), Image.new("L", (64, 64))])
    assert px.shape == (2, 3, p.image_size, p.image_size)
    visual = bb.encode_images(px)
    hidden = bb.llm.get_input_embeddings().embedding_dim
    assert visual.shape == (2, p.tokens_per_image, hidden)
    ids = torch.randint(0, len(p.tokenizer) - 1, (2, 5))
    embeds = torch.cat([visual, bb.llm.get_input_embeddings()(ids)], dim=1)
    out = bb.llm(inputs_embeds=embeds, labels=torch.cat([torch.full((2, p.tokens_per_image), -100), ids], 1))
    out.loss.backward()
    grads = {n for n, q in bb.named_parameters() if q.grad is not None}
    assert any(n.startswith("projector.") for n in grads)
    assert any("lora_" in n for n in grads)
    assert not any(n.startswith("vision.") for n in grads), "the vision encoder is frozen"


def test_image_mode_that_cannot_become_rgb_is_rejected() -> None:
    p = create_backbone("tiny").processor
    with pytest.raises(ValueError, match="record r1 frame 0: image mode 'I;16'"):
        p.pixel_values([Image.new("I;16", (8, 8))], where="record r1")


def test_set_trainable_returns_newly_trainable() -> None:
    bb = create_backbone("tiny")
    add_lora(bb, r=4, alpha=16, dropout=0.0)
    set_trainable(bb, ["projector"])
    newly = set_trainable(bb, ["projector", "vision"])
    assert len(newly) == len(list(bb.vision.parameters()))
    with pytest.raises(ValueError, match="unknown trainable parts"):
        set_trainable(bb, ["decoder"])


def test_composed_backbone_loads_an_llm_from_a_local_path(tmp_path) -> None:
    """The real loading code (`from_pretrained` on a path) on a tiny LLM saved offline."""
    from emoverse.backbones import ComposedBackbone

    saved = create_backbone("tiny")
    saved.llm.save_pretrained(tmp_path / "llm")
    saved.processor.tokenizer.save_pretrained(tmp_path / "llm")
    loaded = ComposedBackbone(vision="vit_tiny_patch16_224", llm=str(tmp_path / "llm"),
                              vision_kwargs={"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2})
    a, b = saved.llm.state_dict(), loaded.llm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.processor.tokenizer.chat_template == saved.processor.tokenizer.chat_template
    assert loaded.processor.image_token_id == saved.processor.image_token_id
    with pytest.raises(OSError):
        ComposedBackbone(vision="vit_tiny_patch16_224", llm=str(tmp_path / "missing"))


def test_projector_starts_at_the_text_embedding_scale() -> None:
    """Visual tokens far larger than text embeddings drown the text (seen: 6x at PyTorch's default init)."""
    bb = create_backbone("tiny")
    visual = bb.encode_images(torch.randn(8, 3, 64, 64)).norm(dim=-1).mean()
    text = bb.llm.get_input_embeddings().weight.norm(dim=-1).median()
    assert 0.5 < float(visual / text) < 2.0
