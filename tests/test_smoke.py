"""Every shipped YAML builds (model, data, Trainer and callbacks) through its smoke path, offline.

`emoverse smoke A.yaml [B.yaml]` merges the configs as their documented `emoverse fit` line does and
swaps only what needs a GPU, weights or the real AMT (docs/curriculum.md, "The paper's configs"). A recipe that cannot build
(a lost `path`, a stale key, a callback that does not fit the curriculum) fails here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from emoverse import AMTDataModule, EmoVerseModule
from emoverse.cli import EmoVerseCLI, cli_kwargs
from emoverse.curriculum import MultiStageCurriculum
from emoverse.smoke import BUDGET_CAP, main, smoke_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "examples" / "configs").rglob("*.yaml"))
COMMAND = re.compile(r"emoverse fit((?:\s+--config\s+\S+?\.yaml)+)")


def documented(path: Path) -> list[str]:
    """The `--config` files of the `emoverse fit` line in the YAML's comments."""
    return [str(REPO / name) for name in COMMAND.search(path.read_text()).group(1).split() if name != "--config"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "examples" / "configs")))
def test_every_shipped_config_builds(path: Path, demo_amt: Path, tmp_path: Path, monkeypatch) -> None:
    merged = tmp_path / "smoke.yaml"
    merged.write_text(smoke_config(documented(path), str(tmp_path / "runs"), str(demo_amt), steps=1))
    monkeypatch.setattr(sys, "argv", ["emoverse"])
    cli = EmoVerseCLI(EmoVerseModule, AMTDataModule, args=["--config", str(merged)], run=False,
                      parser_kwargs={"exit_on_error": False}, **cli_kwargs())
    assert isinstance(cli.model, EmoVerseModule) and isinstance(cli.datamodule, AMTDataModule)
    added = [c for c in cli.trainer.callbacks if isinstance(c, MultiStageCurriculum)]
    assert len(added) == 1 and added[0].curriculum is cli.model.curriculum is cli.datamodule.curriculum
    assert cli.trainer.max_epochs == cli.model.curriculum.total_epochs
    assert all(s.budget in ("all", "remaining") or s.budget <= BUDGET_CAP for s in cli.model.curriculum.stages)


@pytest.mark.parametrize("name", ["m2se_4b.yaml", "ablations/table5_mer.yaml", "scale/fsdp2.yaml"])
def test_smoke_command_trains(name: str, demo_amt: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    assert main([*documented(REPO / "examples" / "configs" / name), "--steps", "2", "--out", str(out),
                 "--demo", str(demo_amt)]) == 0
    run = next(out.glob("*/version_*"))
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "report.html").exists()


def test_smoke_names_a_missing_file(capsys) -> None:
    assert main(["nowhere.yaml"]) == 2
    assert "no such config file: nowhere.yaml" in capsys.readouterr().err
