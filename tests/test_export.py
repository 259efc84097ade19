"""Export: trained weights round-trip through safetensors; merged models load with `from_pretrained`
and generate exactly what the unmerged model generates."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from emoverse import EmoVerseModule
from emoverse.backbones import HFVisionLanguageBackbone
from emoverse.backbones.composed import ComposedModel
from emoverse.data.batches import Example
from emoverse.data.collator import AMTCollator
from emoverse.export import export_merged, export_trained, load_composed, load_trained, main
from tests.test_backbones import nudge_trained


def trained(backbone: str) -> EmoVerseModule:
    torch.manual_seed(0)
    module = EmoVerseModule(backbone)
    nudge_trained(module, 0.05)
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


EXAMPLES = [Example(id=f"r{i}", task="mer", query="Which emotion?" + " Really?" * i, response="",
                    images=[Image.new("RGB", (64, 48), (60 * i, 20, 200))] * (i + 1)) for i in range(2)]


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_qwen2_vl"])
def test_merged_hf_export_generates_the_same_tokens(name: str, tmp_path: Path) -> None:
    module = trained(name)
    batch = AMTCollator(module.processor, "generate")(EXAMPLES)
    before = module.backbone.generate_ids(batch.inputs, 6)
    export_merged(module, tmp_path)
    assert not list(tmp_path.glob("*.bin")) and list(tmp_path.glob("*.safetensors"))
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert not any("lora_" in k for k in model.state_dict())
    reloaded = HFVisionLanguageBackbone(model, AutoProcessor.from_pretrained(tmp_path)).eval()
    assert torch.equal(reloaded.generate_ids(batch.inputs, 6), before)


@pytest.mark.parametrize("name", ["tiny", "tiny_qwen2_mlp"])
def test_merged_composed_export_rebuilds_from_the_folder_alone(name: str, tmp_path: Path) -> None:
    module = trained(name)
    batch = AMTCollator(module.processor, "generate")(EXAMPLES)
    before = module.backbone.generate_ids(batch.inputs, 6)
    vision_state = {k: v.clone() for k, v in module.backbone.part("vision").state_dict().items()}
    export_merged(module, tmp_path)
    config = json.loads((tmp_path / "composed.json").read_text())
    assert config["vision"]["timm_model"] == "vit_tiny_patch16_224" and config["vision"]["timm_kwargs"]["depth"] == 2
    assert config["projector"]["kind"] == ("mlp" if name == "tiny_qwen2_mlp" else "linear")
    # vision.safetensors holds the encoder's weights, every one of them
    saved = load_file(str(tmp_path / "vision.safetensors"))
    assert saved.keys() == vision_state.keys() and all(torch.equal(saved[k], vision_state[k]) for k in saved)
    rebuilt = load_composed(tmp_path)  # timm encoder from composed.json, nothing from `module`
    assert isinstance(rebuilt.core, ComposedModel) and rebuilt.core.pool == config["pool"]
    assert torch.equal(rebuilt.eval().generate_ids(batch.inputs, 6), before)


def test_load_composed_names_a_missing_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="composed.json is missing"):
        load_composed(tmp_path)


def test_export_command_from_a_checkpoint(tmp_path: Path) -> None:
    module = trained("tiny_llava")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    assert main([str(tmp_path / "run.ckpt"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "config.json").exists()
    with pytest.raises(FileNotFoundError, match="is not a file; expected a .ckpt"):
        main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out2")])


def test_export_reads_a_fit_checkpoint_with_weights_only(tmp_path: Path, tiny_module: EmoVerseModule,
                                                        demo_data, monkeypatch: pytest.MonkeyPatch) -> None:
    from emoverse.checkpointing import ResumableCheckpoint

    checkpoint = ResumableCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, keep_epoch_ends=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint])
    trainer.fit(tiny_module, datamodule=demo_data)
    ckpt = next((tmp_path / "ckpt").glob("*.ckpt"))
    torch.load(ckpt, map_location="cpu", weights_only=True)  # a fit checkpoint: tensors and containers only
    calls, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or real_load(*a, **kw))
    assert main([str(ckpt), str(tmp_path / "out")]) == 0
    assert calls == [True]  # STYLE rule 4: never unpickle arbitrary objects from a checkpoint
    assert (tmp_path / "out" / "composed.json").exists()
