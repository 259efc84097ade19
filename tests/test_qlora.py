"""QLoRA on the CPU: 4-bit NF4 language models train through LoRA, also after a validation pass.

bitsandbytes repacks 4-bit weights for its CPU inference kernel on the first eval-mode forward;
training through the repacked weights gives wrong gradients, so `Backbone.add_lora` keeps the
training layout (measured: the LoRA gradient norm fell from 23.7 to 5.0 without the guard).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from emoverse.backbones import Backbone, ComposedBackbone, HFVisionLanguageBackbone, create_backbone
from emoverse.data.batches import Example
from emoverse.data.collator import AMTCollator

bnb = pytest.importorskip("bitsandbytes")
EXAMPLES = [Example(id=f"r{i}", task="msa", query="How does the speaker feel?", response=["Positive", "Negative"][i],
                    images=[Image.new("RGB", (64, 64), (200 * i, 30, 30))]) for i in range(2)]


def composed(tmp_path: Path) -> Backbone:
    saved = create_backbone("tiny")
    saved.core.llm.save_pretrained(tmp_path)
    saved.processor.tokenizer.save_pretrained(tmp_path)
    vit = {"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2}
    return ComposedBackbone(vision="vit_tiny_patch16_224", vision_kwargs=vit, llm=str(tmp_path), quantization="4bit",
                            dtype="float32")


def hf_llava(tmp_path: Path) -> Backbone:
    saved = create_backbone("tiny_llava")
    saved.core.save_pretrained(tmp_path)
    saved.processor.processor.save_pretrained(tmp_path)
    return HFVisionLanguageBackbone(str(tmp_path), quantization="4bit", dtype="float32")


def lora_grads(bb: Backbone, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    bb.train()
    bb.zero_grad()
    loss = bb.loss(batch)["loss"]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in bb.named_parameters() if "lora_" in n and p.grad is not None}


@pytest.mark.parametrize("build", [composed, hf_llava])
def test_qlora_trains_and_survives_a_validation_pass(build, tmp_path: Path) -> None:
    torch.manual_seed(0)
    bb = build(tmp_path)
    lm = bb.part("language_model")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in lm.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in bb.part("projector").modules())  # trained in full precision
    bb.add_lora(4, 16, 0.0)
    bb.set_trainable(["projector", "lora"])
    batch = AMTCollator(bb.processor, "train")(EXAMPLES)
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss, grads = lora_grads(bb, batch)
        opt.step()
        losses.append(loss)
    assert losses[-1] < losses[0]
    before_loss, before = lora_grads(bb, batch)
    assert before and all(g.abs().sum() > 0 for n, g in before.items() if "lora_A" in n)
    bb.eval()
    with torch.no_grad():  # a validation pass: eval mode, no gradients
        bb.loss(batch)
        bb.generate(AMTCollator(bb.processor, "generate")(EXAMPLES), [2, 2])
    after_loss, after = lora_grads(bb, batch)
    assert after_loss == pytest.approx(before_loss, abs=1e-5)
    assert all(torch.allclose(after[n], before[n], atol=1e-5) for n in before)
