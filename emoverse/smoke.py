"""`emoverse smoke CONFIG [CONFIG ...]`: any shipped config for a few steps on the demo AMT with the tiny backbone.

The configs are merged as `emoverse fit --config A --config B` would merge them; then the parts that
need a GPU, weights or the real AMT are swapped for what runs on a laptop CPU in seconds: the
built-in `tiny` backbone (`tiny_audio` where a task hears, `tiny_qwen2_vl` where one takes video:
`tiny_for`; no `backbone_args`), one CPU process in fp32, the demo AMT (built on first
use), small batches, no gradient accumulation, `--steps` optimizer steps and one validation batch.
Every other key (callbacks, curriculum, LoRA, lr, logger, ...) is kept; stage budgets larger than
the demo data are capped and stage `sources` dropped (the demo AMT has one source, `demo`), so the
curriculum, the callbacks and the CLI run as the config says.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

BUDGET_CAP = 200
"""Stage budgets above this are capped (the demo AMT holds about 1,000 records)."""


def smoke_config(configs: list[str], out: str, demo: str, steps: int) -> str:
    """The merged config of `configs` with the smoke overrides, as YAML text for `emoverse fit --config`."""
    from emoverse.cli import EmoVerseCLI, cli_kwargs
    from emoverse.data.datamodule import AMTDataModule
    from emoverse.module import EmoVerseModule

    class _ParseOnly(EmoVerseCLI):
        def instantiate_classes(self) -> None:  # nothing is built while the config is prepared
            pass

    overrides = {
        "trainer.accelerator": "cpu", "trainer.devices": "1", "trainer.num_nodes": "1", "trainer.strategy": "auto",
        "trainer.precision": "32-true", "trainer.max_steps": str(steps), "trainer.accumulate_grad_batches": "1",
        "trainer.limit_val_batches": "1", "trainer.num_sanity_val_steps": "0", "trainer.check_val_every_n_epoch": "1",
        "trainer.logger.init_args.save_dir": out, "trainer.default_root_dir": out,
        "model.init_args.backbone": "tiny", "model.init_args.backbone_args": "null",
        "model.init_args.gradient_checkpointing": "false",
        "data.init_args.path": demo, "data.init_args.demo": "true", "data.init_args.batch_size": "2",
        "data.init_args.eval_batch_size": "4", "data.init_args.max_eval_per_task": "2",
        "data.init_args.num_workers": "0",
    }
    args = [*(a for c in configs for a in ("--config", c)), *(a for k, v in overrides.items() for a in (f"--{k}", v))]
    saved = sys.argv
    sys.argv = ["emoverse"]  # LightningCLI warns when argv and args both hold arguments
    try:
        cli = _ParseOnly(EmoVerseModule, AMTDataModule, args=args, run=False, parser_kwargs={"exit_on_error": False},
                         **cli_kwargs())
    finally:
        sys.argv = saved
    _fit_to_demo(cli.config)
    cli.config.model.init_args.backbone = tiny_for(cli.config.model.init_args.get("task_args"))
    return cli.parser.dump(cli.config, skip_none=False)


TINY_FOR_MEDIA: dict[frozenset[str], str] = {
    frozenset(): "tiny", frozenset({"audio"}): "tiny_audio", frozenset({"video"}): "tiny_qwen2_vl",
    frozenset({"audio", "video"}): "tiny_qwen2_5_omni",
}
"""The tiny preset a smoke run takes for what the config's tasks show besides frames."""


def tiny_for(task_args: Any) -> str:
    """The tiny backbone that takes every medium `task_args` names (`{task: {media: [...]}}`): `tiny`, or one
    that also hears (`tiny_audio`), takes video, or both."""
    media = {m for args in (task_args or {}).values() if isinstance(args, dict) for m in args.get("media") or []}
    return TINY_FOR_MEDIA[frozenset(media) & {"audio", "video"}]


def _fit_to_demo(config: Any) -> None:
    curriculum = config.get("curriculum")
    if curriculum is None or not curriculum.init_args.get("stages"):
        return
    for stage in curriculum.init_args.stages:
        if isinstance(stage.budget, int) and stage.budget > BUDGET_CAP:
            stage.budget = BUDGET_CAP
        if isinstance(stage.samples_per_epoch, int) and stage.samples_per_epoch > BUDGET_CAP:
            stage.samples_per_epoch = BUDGET_CAP
        stage.sources = None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emoverse smoke", description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="the config files, in `emoverse fit --config` order")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (default 2)")
    parser.add_argument("--out", default="runs/smoke", help="logger folder (default runs/smoke)")
    parser.add_argument("--demo", default="data/demo_amt", help="the demo AMT, built there if missing")
    args = parser.parse_args(argv)
    missing = [c for c in args.configs if not Path(c).is_file()]
    if missing:
        print(f"emoverse smoke: no such config file: {', '.join(missing)}", file=sys.stderr)
        return 2
    text = smoke_config(args.configs, args.out, args.demo, args.steps)
    from emoverse.cli import main as emoverse

    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "smoke.yaml"
        merged.write_text(text, encoding="utf-8")
        return emoverse(["fit", "--config", str(merged)])
