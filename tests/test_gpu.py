"""GPU-only checks (`pytest -m gpu` on a CUDA machine): QLoRA through bitsandbytes and bf16 training.

Not run by the default suite; they skip when CUDA is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoverse import AMTDataModule, EmoVerseModule, create_backbone
from emoverse.backbones import ComposedBackbone
from emoverse.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2}


def test_qlora_step_on_a_4bit_llm(tmp_path: Path, demo_amt: Path) -> None:
    saved = create_backbone("tiny")
    saved.core.llm.save_pretrained(tmp_path / "llm")
    saved.processor.tokenizer.save_pretrained(tmp_path / "llm")
    backbone = ComposedBackbone(vision="vit_tiny_patch16_224", vision_kwargs=TINY_VIT, llm=str(tmp_path / "llm"),
                                quantization="4bit", dtype="bfloat16")
    module = EmoVerseModule(backbone, lr=1e-3).cuda()
    assert getattr(module.backbone.core.llm, "is_loaded_in_4bit", False)
    data = AMTDataModule(str(demo_amt), batch_size=4, processor=module.processor, tasks=module.tasks)
    data.setup("fit")
    batch = next(iter(data.train_dataloader())).to(torch.device("cuda"))
    loss = module(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for n, p in module.named_parameters() if "lora_" in n)


def test_quickstart_on_gpu_in_bf16(tmp_path: Path, demo_amt: Path) -> None:
    # --debug: an error propagates with its traceback instead of becoming exit status 1
    status = main(["fit", "--debug", "--config", str(REPO / "examples" / "configs" / "quickstart.yaml"),
                   "--data.init_args.path", str(demo_amt), "--trainer.accelerator", "gpu",
                   "--trainer.precision", "bf16-mixed", "--trainer.limit_train_batches", "2",
                   "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert status == 0
    assert list(tmp_path.glob("lightning_logs/version_*/checkpoints/*.ckpt")), "fit wrote no checkpoint"
