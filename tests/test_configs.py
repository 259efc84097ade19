"""Every shipped YAML parses with the `emoverse` CLI's parser, as its own `emoverse fit` line combines it.

Parsing only: models, data and the Trainer are not built (the 4B/8B presets would download weights).
Each YAML names its command in a comment (`emoverse fit --config A.yaml [--config B.yaml]`); that
command's configs are the ones parsed, so the documented way to run an ablation is what is tested.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from jsonargparse import ArgumentError, Namespace

from emoverse import AMTDataModule, EmoVerseModule, Stage
from emoverse.cli import EmoVerseCLI, cli_kwargs
from emoverse.curriculum import Curriculum

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "examples" / "configs").rglob("*.yaml"))
COMMAND = re.compile(r"emoverse fit((?:\s+--config\s+\S+?\.yaml)+)")


class ParseOnlyCLI(EmoVerseCLI):
    """The `emoverse` parser; `instantiate_classes` is skipped, so nothing is built or downloaded."""

    def instantiate_classes(self) -> None:
        pass


def parse(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Namespace:
    monkeypatch.setattr(sys, "argv", ["emoverse"])  # LightningCLI warns when argv and args both hold arguments
    cli = ParseOnlyCLI(EmoVerseModule, AMTDataModule, args=args, run=False,
                       parser_kwargs={"exit_on_error": False}, **cli_kwargs())
    return cli.config


def documented_configs(path: Path) -> list[Path]:
    """The `--config` files of the `emoverse fit` command written in the YAML's comments."""
    match = COMMAND.search(path.read_text(encoding="utf-8"))
    assert match, f"{path}: no `emoverse fit --config ...` command in its comments"
    files = [REPO / name for name in match.group(1).split() if name != "--config"]
    assert files[-1] == path, f"{path}: its command ends with {files[-1]}, expected the file itself"
    return files


def curriculum(config: Namespace) -> list[Stage]:
    """The stages of the config's `curriculum:`, built (Stage and Curriculum validate their fields)."""
    assert config.curriculum is not None, "expected a top-level `curriculum:`"
    listed = [c.class_path for c in config.trainer.callbacks or []]
    assert not any(c.endswith("MultiStageCurriculum") for c in listed), "the CLI adds MultiStageCurriculum itself"
    return Curriculum([Stage(**s.as_dict()) for s in config.curriculum.init_args.stages]).stages


def args_of(files: list[Path]) -> list[str]:
    return [arg for f in files for arg in ("--config", str(f))]


def test_configs_are_found() -> None:
    names = {str(p.relative_to(REPO / "examples" / "configs")) for p in CONFIGS}
    assert {"quickstart.yaml", "m2se_4b.yaml", "m2se_8b.yaml", "ablations/table2_fer_low.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "examples" / "configs")))
def test_config_parses(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse(args_of(documented_configs(path)), monkeypatch)
    stages = curriculum(config)
    assert config.trainer.max_epochs == sum(s.epochs for s in stages)  # derived by the CLI
    assert config.trainer.reload_dataloaders_every_n_epochs == 1
    trained = {t for s in stages for t in s.ratios}
    assert trained <= set(config.model.init_args.tasks), f"stages train {sorted(trained)}"
    # step-interval and epoch-end (stage-end) checkpoints are on in every shipped config
    checkpoints = [c for c in config.trainer.callbacks if c.class_path.endswith("ResumableCheckpoint")]
    assert len(checkpoints) == 1 and checkpoints[0].init_args.every_n_train_steps > 0
    assert checkpoints[0].init_args.keep_epoch_ends is True
    if path.parent.name == "ablations":
        # the base's checkpoint settings survive the override's callbacks list
        checkpoints = [c for c in config.trainer.callbacks if c.class_path.endswith("ResumableCheckpoint")]
        assert len(checkpoints) == 1 and checkpoints[0].init_args.every_n_train_steps == 200
        assert config.trainer.logger.init_args.name == path.stem


def test_m2se_configs_follow_the_paper(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, backbone in (("m2se_4b", "emoverse_4b"), ("m2se_8b", "emoverse_8b")):
        config = parse(["--config", str(REPO / "examples" / "configs" / f"{name}.yaml")], monkeypatch)
        model = config.model.init_args
        assert (model.backbone, model.lora_r, model.lora_alpha, model.lr) == (backbone, 8, 32, 1e-5)
        assert config.trainer.precision == "bf16-mixed" and config.trainer.accelerator == "gpu"
        stages = curriculum(config)
        assert [(s.ratios, s.budget, s.epochs) for s in stages] == [
            ({"msa": 6, "fer": 3, "mer": 1}, 15000, 2),
            ({"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, "remaining", 2),
        ]


def test_ablations_change_what_the_paper_varies(monkeypatch: pytest.MonkeyPatch) -> None:
    ablations = REPO / "examples" / "configs" / "ablations"

    def stages_of(name: str) -> list[tuple[dict[str, float], str | int]]:
        config = parse(args_of(documented_configs(ablations / f"{name}.yaml")), monkeypatch)
        return [(s.ratios, s.budget) for s in curriculum(config)]

    assert stages_of("table2_fer_low") == [({"msa": 6, "fer": 1, "mer": 3}, 15000)]
    assert stages_of("table3_mer")[1] == ({"mer": 1}, "remaining")
    assert stages_of("table5_ecpe") == [({"ecpe": 1}, "all")]


@pytest.mark.parametrize("bad", [
    "model:\n  init_args:\n    lora_rank: 8\n",  # unknown module argument
    "data:\n  init_args:\n    batch: 8\n",  # unknown datamodule argument
    "trainer:\n  max_epoch: 4\n",  # unknown Trainer argument
    "curriculum:\n  stages:\n    - {name: one, ratio: {msa: 1}}\n",  # unknown Stage field
])
def test_wrong_key_is_rejected(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = tmp_path / "bad.yaml"
    override.write_text(bad)
    base = REPO / "examples" / "configs" / "m2se_4b.yaml"
    with pytest.raises(ArgumentError):
        parse(["--config", str(base), "--config", str(override)], monkeypatch)


def test_parsing_alone_creates_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse-only CLIs (these tests, --print_config) claimed a version_N folder in the working directory."""
    monkeypatch.chdir(tmp_path)
    parse(["--config", str(REPO / "examples" / "configs" / "quickstart.yaml")], monkeypatch)
    assert not (tmp_path / "runs").exists()
