"""The `emoverse` command: LightningCLI over EmoVerseModule and AMTDataModule, plus `score` and `collect`."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from lightning.pytorch.cli import LightningCLI

from emoverse.prediction import JSONLPredictionWriter


def cli_kwargs() -> dict[str, Any]:
    """How `emoverse` builds its LightningCLI (tests parse the example configs with the same settings).

    A function, so every CLI run gets its own callback instances.
    """
    trainer_defaults = {
        "default_root_dir": "runs",
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
        # TaskWeightedSampler gives each DDP rank its share itself
        "use_distributed_sampler": False,
        # callbacks given here are always present: `emoverse predict` leaves {log_dir}/predictions.jsonl
        "callbacks": [JSONLPredictionWriter()],
    }
    return {"trainer_defaults": trainer_defaults, "subclass_mode_model": True, "subclass_mode_data": True,
            "auto_configure_optimizers": False}

TOOLS: dict[str, str] = {"score": "emoverse.scoring", "collect": "emoverse.experiments", "report": "emoverse.report.cli",
                         "amt": "emoverse.amt.cli"}
"""Subcommands that are plain tools, not Trainer runs: name -> module with `main(argv) -> int`."""


class EmoVerseCLI(LightningCLI):
    """`emoverse fit|validate|test|predict --config my.yaml`."""


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] and words[0] in TOOLS:
        return importlib.import_module(TOOLS[words[0]]).main(words[1:])
    from emoverse.data.datamodule import AMTDataModule
    from emoverse.module import EmoVerseModule

    EmoVerseCLI(EmoVerseModule, AMTDataModule, args=argv, save_config_kwargs={"overwrite": True}, **cli_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
