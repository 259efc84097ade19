"""The `emoverse` command: LightningCLI over EmoVerseModule and AMTDataModule, plus `emoverse score`."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from emoverse.data.datamodule import AMTDataModule
from emoverse.module import EmoVerseModule

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
    # TaskWeightedSampler gives each DDP rank its share itself
    "use_distributed_sampler": False,
}


class EmoVerseCLI(LightningCLI):
    """`emoverse fit|validate|test|predict --config my.yaml`."""


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["score"]:
        from emoverse.scoring import main as score

        return score(words[1:])
    EmoVerseCLI(EmoVerseModule, AMTDataModule, args=argv, trainer_defaults=TRAINER_DEFAULTS,
                subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False,
                save_config_kwargs={"overwrite": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
