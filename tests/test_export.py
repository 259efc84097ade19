"""Export: trained weights round-trip through safetensors; merged models load with `from_pretrained`
and generate exactly what the unmerged model generates."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from emoverse import EmoVerseModule
from emoverse.backbones import ComposedBackbone, HFVisionLanguageBackbone
from emoverse.backbones.composed import ComposedModel
from emoverse.data.collator import AMTCollator
from emoverse.export import export_merged, export_trained, load_trained, main


def trained(backbone: str) -> EmoVerseModule:
    torch.manual_seed(0)
    module = EmoVerseModule(backbone)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return module.eval()


def test_export_and_load_restore_the_trained_weights(tmp_path: Path) -> None:
    a = trained("tiny")
    out = export_trained(a, tmp_path / "export")
    assert (out / "lora" / "adapter_model.safetensors").exists()
    b = EmoVerseModule("tiny")
    load_trained(b, out)
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_from_a_wrong_folder_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lora is missing"):
        load_trained(EmoVerseModule("tiny"), tmp_path)


EXAMPLES = [{"id": f"r{i}", "task": "mer", "query": "Which emotion?" + " Really?" * i, "response": "",
             "images": [Image.new("RGB", (64, 48), (60 * i, 20, 200))] * (i + 1), "record": None} for i in range(2)]


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_qwen2_vl"])
def test_merged_hf_export_generates_the_same_tokens(name: str, tmp_path: Path) -> None:
    module = trained(name)
    batch = AMTCollator(module.processor, "generate")(EXAMPLES)
    before = module.backbone.generate_ids(batch["inputs"], 6)
    export_merged(module, tmp_path)
    assert not list(tmp_path.glob("*.bin")) and list(tmp_path.glob("*.safetensors"))
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert not any("lora_" in k for k in model.state_dict())
    reloaded = HFVisionLanguageBackbone(model, AutoProcessor.from_pretrained(tmp_path)).eval()
    assert torch.equal(reloaded.generate_ids(batch["inputs"], 6), before)


def test_merged_composed_export_generates_the_same_tokens(tmp_path: Path) -> None:
    module = trained("tiny")
    batch = AMTCollator(module.processor, "generate")(EXAMPLES)
    before = module.backbone.generate_ids(batch["inputs"], 6)
    vision = module.backbone.part("vision")
    export_merged(module, tmp_path)
    llm = AutoModelForCausalLM.from_pretrained(tmp_path)
    rebuilt = ComposedBackbone(vision, llm, AutoTokenizer.from_pretrained(tmp_path))
    from safetensors.torch import load_file

    rebuilt.part("projector").load_state_dict(load_file(str(tmp_path / "projector.safetensors")))
    assert isinstance(rebuilt.core, ComposedModel)
    assert torch.equal(rebuilt.eval().generate_ids(batch["inputs"], 6), before)


def test_export_command_from_a_checkpoint(tmp_path: Path) -> None:
    module = trained("tiny_llava")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    assert main([str(tmp_path / "run.ckpt"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "config.json").exists()
    with pytest.raises(FileNotFoundError, match="is not a file; expected a .ckpt"):
        main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out2")])
