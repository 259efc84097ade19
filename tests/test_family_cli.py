"""Every transformers family trains through `emoverse fit` by changing only the backbone entry of the
quickstart, exports with `emoverse export`, and the export reloads by path and generates what the checkpoint
generates: offline, in the default suite.

The fit is the quickstart config (packed rows where the family packs, padded token-budget batches where it
cannot) with two optimizer steps on batches of 512 tokens and no validation (what a longer
fit adds, in-loop generation and scoring, runs in `pytest -m slow tests/test_backbone_contract.py`), so each
family costs a few seconds on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from emoverse import EmoVerseModule
from emoverse.backbones import HFVisionLanguageBackbone, create_backbone
from emoverse.cli import main as emoverse_fit
from emoverse.data.collator import AMTCollator
from emoverse.export import main as emoverse_export
from tests.test_backbones import HF, examples
from tests.test_cli import QUICKSTART, _losses

STEPS = 2


def _quickstart_with(backbone: str, folder: Path) -> Path:
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["backbone"] = backbone
    mine = folder / "my_quickstart.yaml"
    mine.write_text(yaml.safe_dump(config))
    return mine


@pytest.mark.parametrize("name", HF)
def test_family_fits_exports_and_the_export_generates_what_the_checkpoint_does(
    name: str, demo_amt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["emoverse"])  # LightningCLI warns when argv and args both hold arguments
    runs = tmp_path / "runs"
    emoverse_fit(["fit", "--config", str(_quickstart_with(name, tmp_path)), "--data.init_args.path", str(demo_amt),
                  "--trainer.max_steps", str(STEPS), "--trainer.limit_val_batches", "0",
                  "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
                  "--data.init_args.max_tokens", "512", "--trainer.logger.init_args.save_dir", str(runs),
                  "--trainer.default_root_dir", str(runs)])
    run = next(runs.glob("lightning_logs/version_*"))
    losses = _losses(run)
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert yaml.safe_load((run / "hparams.yaml").read_text())["backbone"] == name
    ckpt = max((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)

    assert emoverse_export([str(ckpt), str(tmp_path / "out")]) == 0
    images_kwargs = create_backbone(name).processor.images_kwargs
    exported = HFVisionLanguageBackbone(str(tmp_path / "out"), images_kwargs=images_kwargs).eval()
    assert type(exported.core) is type(create_backbone(name).core)
    # the export carries the trained projector, not the preset's initial one
    fresh = dict(create_backbone(name).part("projector").named_parameters())
    trained = dict(exported.part("projector").named_parameters())
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh)

    restored = EmoVerseModule.load_from_checkpoint(ckpt, weights_only=True).eval()
    prompts = examples((1, 2))
    want = restored.backbone.generate_ids(AMTCollator(restored.processor, "generate")(prompts).inputs, 4)
    got = exported.generate_ids(AMTCollator(exported.processor, "generate")(prompts).inputs, 4)
    assert torch.equal(got, want)
