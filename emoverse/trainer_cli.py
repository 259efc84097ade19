"""The Trainer subcommands of `emoverse` (fit/validate/test/predict): LightningCLI over EmoVerseModule and
AMTDataModule. `emoverse.cli` imports this module only for them, so `emoverse --help` and the tools need
no torch.

Errors print as one line (`--debug` or EMOVERSE_DEBUG=1 shows the traceback), every run gets its own
`version_N` folder (claimed on rank 0, given back when the start fails: `checkpointing.RunFolder`), and
`--ckpt_path last` resumes from the newest checkpoint of the run's logger folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from emoverse.checkpointing import RunFolder, TrainingInterrupted, find_last_checkpoint
from emoverse.cli import print_error
from emoverse.cli_checks import UserError, check_world_size, config_error_line
from emoverse.curriculum import Curriculum, MultiStageCurriculum, m2se_stages
from emoverse.prediction import JSONLPredictionWriter
from emoverse.run import curriculum_trainer_args


def cli_kwargs() -> dict[str, Any]:
    """How `emoverse` builds its LightningCLI (tests parse the example configs with the same settings).

    A function, so every CLI run gets its own callback instances.
    """
    trainer_defaults = {
        "default_root_dir": "runs",
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
        # callbacks given here are always present: `emoverse predict` leaves {log_dir}/predictions.jsonl
        "callbacks": [JSONLPredictionWriter()],
    }
    return {"trainer_defaults": trainer_defaults, "subclass_mode_model": True, "subclass_mode_data": True,
            "auto_configure_optimizers": False}


_LOGGERS_WITH_VERSIONS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger",
                          "lightning.pytorch.loggers.csv_logs.CSVLogger",
                          "lightning.pytorch.loggers.tensorboard.TensorBoardLogger")


class EmoVerseCLI(LightningCLI):
    """`emoverse fit|validate|test|predict --config my.yaml`.

    Args:
        run_folder: where the run's claimed `version_N` is kept, so that the caller can give it back
            when the run fails before it wrote a result (`RunFolder.release`); a fresh one by default.
        *args, **kwargs: LightningCLI's.
    """

    def __init__(self, *args: Any, run_folder: RunFolder | None = None, **kwargs: Any) -> None:
        self.run_folder = RunFolder() if run_folder is None else run_folder
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        # the datamodule batches with the model's processor and tasks: injected, configured once
        parser.link_arguments("model", "data.init_args.processor", compute_fn=lambda m: m.processor,
                              apply_on="instantiate")
        parser.link_arguments("model", "data.init_args.tasks", compute_fn=lambda m: m.tasks, apply_on="instantiate")
        # one Curriculum object (top-level `curriculum:`) for the datamodule, the module and the callback
        parser.add_argument("--curriculum", type=Curriculum | None, default=None,
                            help="the M2SE stages (docs/curriculum.md); the CLI adds MultiStageCurriculum for it")
        parser.link_arguments("curriculum", "data.init_args.curriculum", apply_on="instantiate")
        parser.link_arguments("curriculum", "model.init_args.curriculum", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        curriculum = init.get("curriculum")
        if curriculum is not None:
            listed = list(init["trainer"].get("callbacks") or [])
            kwargs["callbacks"] = [*listed, MultiStageCurriculum(curriculum)]
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _derive_epochs(config)
        root = _logger_root(config)
        if config.get("ckpt_path") == "last":
            folders = [*_checkpoint_dirs(config), *([root] if root else [])]
            found = find_last_checkpoint(*folders)
            if found is None:
                where = ", ".join(str(f) for f in folders) or "(no logger folder configured)"
                raise UserError(f"--ckpt_path last: no checkpoint under {where}; pass the file with --ckpt_path PATH")
            verb = "resuming from" if self.subcommand == "fit" else "using"
            print(f"emoverse {self.subcommand}: {verb} {found} (the newest checkpoint under "
                  f"{', '.join(map(str, folders))})", file=sys.stderr)
            config.ckpt_path = str(found)

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer", {})
        check_world_size(trainer.get("num_nodes", 1), trainer.get("devices", "auto"))
        root = _logger_root(config)
        if root is not None and config.trainer.logger.init_args.get("version") is None:
            # claimed before the Trainer exists, so a run started at the same time gets the next one; on
            # rank 0 only (the other ranks' loggers write nothing); given back by `main` if the start fails
            version = self.run_folder.claim(root, rank_zero_only.rank)
            if version is not None:
                config.trainer.logger.init_args.version = version
        try:
            super().instantiate_classes()
        except BaseException:
            self.run_folder.release()  # a refused start (unknown backbone, bad value) leaves no version_N
            raise


def _derive_epochs(config: Any) -> None:
    """With a curriculum and no `trainer.max_epochs`, the Trainer's epochs are the stages' (a given value
    is checked by `MultiStageCurriculum.setup`), and the train loader is rebuilt every epoch."""
    curriculum = config.get("curriculum")
    if curriculum is None:
        return
    stages = curriculum.init_args.get("stages") or m2se_stages()
    trainer = config.trainer
    derived = curriculum_trainer_args(sum(stage.epochs for stage in stages), {
        "max_epochs": trainer.get("max_epochs"),
        "reload_dataloaders_every_n_epochs": trainer.get("reload_dataloaders_every_n_epochs")})
    trainer.max_epochs = derived["max_epochs"]
    trainer.reload_dataloaders_every_n_epochs = derived["reload_dataloaders_every_n_epochs"]


def _logger_root(config: Any) -> Path | None:
    """`save_dir/name` of a CSV or TensorBoard logger in the config (where `version_N` folders go)."""
    logger = config.get("trainer", {}).get("logger")
    if not hasattr(logger, "class_path") or logger.class_path not in _LOGGERS_WITH_VERSIONS:
        return None
    args = logger.init_args
    return Path(args.save_dir) / (args.get("name") or "")


def _checkpoint_dirs(config: Any) -> list[Path]:
    """Folders given explicitly as `dirpath` to checkpoint callbacks in the config."""
    callbacks = config.get("trainer", {}).get("callbacks") or []
    return [Path(cb.init_args.dirpath) for cb in callbacks
            if hasattr(cb, "init_args") and cb.init_args.get("dirpath")]


def run(command: str, words: list[str], from_sys_argv: bool, debug: bool) -> int:
    """Run a Trainer subcommand (`words` = [command, options...]); returns the exit status.

    A run that fails before it wrote a result gives its `version_N` folder back (`RunFolder.release`).
    """
    from emoverse.data.datamodule import AMTDataModule
    from emoverse.module import EmoVerseModule

    folder = RunFolder()
    try:
        try:
            if from_sys_argv:  # LightningCLI reads sys.argv (it warns when given both)
                sys.argv[1:] = words
            # exit_on_error=False: a wrong key raises, and is named in one line below instead of after the usage
            EmoVerseCLI(EmoVerseModule, AMTDataModule, args=None if from_sys_argv else words, run_folder=folder,
                        save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False}, **cli_kwargs())
        except BaseException:
            folder.release()
            raise
        return 0
    except argparse.ArgumentError as err:
        if debug:
            raise
        print(f"emoverse {command}: {config_error_line(str(err))}\n  (emoverse {command} --help lists the options; "
              "--debug shows the parser's whole message)", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"emoverse {command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except SIGTERMException:  # Lightning's own handling, outside `fit`'s training batches
        print(f"emoverse {command}: stopped by SIGTERM; no checkpoint written (outside training, or no "
              "emoverse.checkpointing.ResumableCheckpoint in trainer.callbacks)", file=sys.stderr)
        return 143
    except Exception as err:
        if debug:
            raise
        print_error(command, err)
        return 1
