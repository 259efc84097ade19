"""`emoverse fit` through LightningCLI: the quickstart config, a user backbone, checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from emoverse import EmoVerseModule
from emoverse.cli import main

REPO = Path(__file__).resolve().parents[1]

QUICKSTART = REPO / "examples" / "configs" / "quickstart.yaml"
EPOCHS = sum(stage["epochs"] for stage in yaml.safe_load(QUICKSTART.read_text())["curriculum"]["stages"])


def _fit(config: Path, data: Path, root: Path, *extra: str) -> Path:
    main(["fit", "--config", str(config), "--data.init_args.path", str(data),
          "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
          "--data.init_args.max_eval_per_task", "2", "--trainer.num_sanity_val_steps", "0",
          "--trainer.logger.init_args.save_dir", str(root), "--trainer.default_root_dir", str(root), *extra])
    return next(root.glob("lightning_logs/version_*"))


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_quickstart_fit_logs_and_checkpoints_trainable_weights_only(demo_amt: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = _fit(QUICKSTART, demo_amt, tmp_path, "--trainer.log_every_n_steps", "1")
    assert len(_losses(run)) == EPOCHS * 3  # 3 batches an epoch
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/msa/loss", "val/msa/acc2_nn", "val/ecpe/f1"} <= set(header)
    # the last validation's answers are kept, so the report after fit alone has the per-task analyses
    val = [json.loads(line) for line in (run / "val_predictions.jsonl").read_text().splitlines()]
    assert val and {"prediction", "target"} <= set(val[0]) and {r["task"] for r in val} >= {"mer", "msa"}
    assert "mer_confusion" in (run / "report.html").read_text()
    ckpt_path = next((run / "checkpoints").glob("*.ckpt"))
    ckpt = torch.load(ckpt_path, weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(".projector." in k or "lora_" in k for k in keys)
    assert ckpt["hyper_parameters"]["backbone"] == "tiny"

    restored = EmoVerseModule.load_from_checkpoint(ckpt_path, weights_only=True)
    state = restored.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items())

    main(["predict", "--config", str(QUICKSTART), "--data.init_args.path", str(demo_amt),
          "--ckpt_path", str(ckpt_path), "--trainer.limit_predict_batches", "1",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "predict")])
    out = next((tmp_path / "predict").glob("lightning_logs/version_*/predictions.jsonl"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 32 and set(rows[0]) == {"id", "task", "prompt", "generation", "prediction"}
    assert f"emoverse predict: wrote 32 answers to {out}" in capsys.readouterr().err


@pytest.mark.parametrize("backbone", [
    {"class_path": "custom_backbone.ConvBackbone", "init_args": {"channels": 16}},  # the user's own subclass
    "tiny_llava",  # a transformers-native LLaVA through HFVisionLanguageBackbone
])
def test_other_backbones_train_with_only_the_backbone_entry_changed(
    backbone: str | dict, demo_amt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["backbone"] = backbone
    mine = tmp_path / "my_quickstart.yaml"
    mine.write_text(yaml.safe_dump(config))
    run = _fit(mine, demo_amt, tmp_path / "runs", "--trainer.log_every_n_steps", "1")
    losses = _losses(run)
    assert len(losses) == EPOCHS * 3 and all(torch.isfinite(torch.tensor(losses)))
    hp = yaml.safe_load((run / "hparams.yaml").read_text())
    name = hp["backbone"] if isinstance(backbone, str) else hp["backbone"]["class_path"]
    assert name == (backbone if isinstance(backbone, str) else backbone["class_path"])


@pytest.mark.parametrize("where", ["yaml", "command line"])
def test_unknown_yaml_key_is_named_first_in_one_line(where: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lora_rank: 4\n")
    extra = ["--config", str(bad)] if where == "yaml" else ["--model.init_args.lora_rank", "4"]
    status = main(["fit", "--config", str(QUICKSTART), *extra, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[0] == "emoverse fit: model.init_args.lora_rank: not an argument of emoverse.EmoVerseModule"
    assert len(err) <= 2 and not any(line.startswith("usage:") for line in err)
    assert not list(tmp_path.rglob("version_*"))


def test_a_refused_start_leaves_no_version_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["fit", "--config", str(QUICKSTART), "--model.init_args.backbone", "no_such_backbone",
                   "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert status == 1 and "unknown backbone 'no_such_backbone'" in capsys.readouterr().err
    assert (tmp_path / "lightning_logs").is_dir() and not list(tmp_path.rglob("version_*"))


@pytest.mark.parametrize("recipe", ["slurm", "torchrun"])
def test_a_multi_node_recipe_without_its_launcher_fails_instead_of_waiting(
    recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    args = ["fit", "--config", str(REPO / "examples/configs/m2se_4b.yaml"),
            "--config", str(REPO / f"examples/configs/scale/{recipe}.yaml"),
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "trainer.num_nodes=2 x trainer.devices=4 needs 8 processes" in err and "torchrun --nnodes 2" in err
    assert not list(tmp_path.rglob("version_*"))
    monkeypatch.setenv("WORLD_SIZE", "4")  # a launcher that started fewer processes than the recipe needs
    assert main(args) == 1 and "= 8 processes, but WORLD_SIZE=4" in capsys.readouterr().err


def test_world_size_check_accepts_a_matching_launcher() -> None:
    from emoverse.cli_checks import check_world_size

    check_world_size(2, 4, {"SLURM_NTASKS": "8"})
    check_world_size(2, [0, 1], {"WORLD_SIZE": "4"})
    check_world_size(1, 4, {})  # one node: Lightning starts the processes itself


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(QUICKSTART), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["lora_alpha"] == 32
