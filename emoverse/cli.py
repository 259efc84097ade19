"""The `emoverse` command: LightningCLI over EmoVerseModule and AMTDataModule, plus the `TOOLS`.

Errors print as one line (`--debug` or EMOVERSE_DEBUG=1 shows the traceback), third-party noise
is filtered (`emoverse._quiet`), every run gets its own `version_N` folder, and `--ckpt_path last`
resumes from the newest checkpoint of the run's logger folder.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from emoverse._quiet import quiet_third_party
from emoverse.checkpointing import TrainingInterrupted, claim_version, find_last_checkpoint
from emoverse.cli_checks import check_world_size, config_error_line
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

TOOLS: dict[str, str] = {"score": "emoverse.scoring", "collect": "emoverse.experiments", "report": "emoverse.report.cli",
                         "amt": "emoverse.amt.cli", "export": "emoverse.export",
                         "smoke": "emoverse.smoke"}
"""Subcommands that are plain tools, not Trainer runs: name -> module with `main(argv) -> int`."""


TRAINER_COMMANDS: dict[str, str] = {
    "fit": "train (--ckpt_path last resumes the newest checkpoint of the run)",
    "validate": "generate and score the val split",
    "test": "generate and score the test split; writes test_predictions.jsonl",
    "predict": "generate answers for the test split; writes predictions.jsonl",
}
_LOGGERS_WITH_VERSIONS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger",
                          "lightning.pytorch.loggers.csv_logs.CSVLogger",
                          "lightning.pytorch.loggers.tensorboard.TensorBoardLogger")


class UserError(Exception):
    """A mistake in the command line or config, reported as one line."""


class EmoVerseCLI(LightningCLI):
    """`emoverse fit|validate|test|predict --config my.yaml`."""

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
        claimed = None
        if root is not None and config.trainer.logger.init_args.get("version") is None:
            # claimed now, before the Trainer exists: a run started at the same time gets the next one
            # (here rather than in before_instantiate_classes, so parsing alone never creates a folder)
            config.trainer.logger.init_args.version = claim_version(root)
            claimed = root / f"version_{config.trainer.logger.init_args.version}"
        try:
            super().instantiate_classes()
        except BaseException:
            if claimed is not None and claimed.is_dir() and not any(claimed.iterdir()):
                claimed.rmdir()  # a refused start (unknown backbone, bad value) leaves no empty version_N
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


def describe_commands() -> str:
    """`emoverse --help`: every subcommand with its one-line summary."""
    lines = ["usage: emoverse COMMAND [options]   (emoverse COMMAND --help for the options)", "",
             "Trainer runs (LightningCLI; --config my.yaml):"]
    lines += [f"  {name:<10} {summary}" for name, summary in TRAINER_COMMANDS.items()]
    lines += ["", "Tools:"]
    lines += [f"  {name:<10} {_summary(module)}" for name, module in TOOLS.items()]
    lines += ["", "Global: --debug (or EMOVERSE_DEBUG=1) shows tracebacks and third-party warnings."]
    return "\n".join(lines)


def _summary(module: str) -> str:
    """First docstring line of `module`, read without importing it (tools may import heavy packages)."""
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return f"({module} is not installed)"
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else module


def _debug_requested(words: list[str]) -> bool:
    return "--debug" in words or os.environ.get("EMOVERSE_DEBUG", "").lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    """Run `emoverse ...`; returns the exit status (0 ok, 1 error, 2 usage, 128+N stopped by signal N)."""
    words = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(words)
    words = [w for w in words if w != "--debug"]
    if not words or words[0] in ("-h", "--help"):
        print(describe_commands(), file=sys.stdout if words else sys.stderr)
        return 0 if words else 2
    command = words[0]
    if command not in TRAINER_COMMANDS and command not in TOOLS and not command.startswith("-"):
        print(f"emoverse: unknown command {command!r}; expected one of {[*TRAINER_COMMANDS, *TOOLS]}", file=sys.stderr)
        return 2
    if not debug:
        quiet_third_party()
    try:
        if command in TOOLS:
            return importlib.import_module(TOOLS[command]).main(words[1:])
        from emoverse.data.datamodule import AMTDataModule
        from emoverse.module import EmoVerseModule

        if argv is None:  # LightningCLI reads sys.argv (it warns when given both)
            sys.argv[1:] = words
        # exit_on_error=False: a wrong key raises, and is named in one line below instead of after the usage
        EmoVerseCLI(EmoVerseModule, AMTDataModule, args=None if argv is None else words,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False}, **cli_kwargs())
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
        print(f"emoverse {command}: {_one_line(err)}\n  (emoverse --debug ... or EMOVERSE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """The innermost message of an exception chain (wrappers such as jsonargparse's add only context)."""
    while err.__cause__ is not None and str(err.__cause__) and not isinstance(err, UserError):
        err = err.__cause__
    message = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err  # no repr quotes
    text = " ".join(str(message).split())
    return text if isinstance(err, (UserError, ValueError, KeyError, TypeError, FileNotFoundError)) and text \
        else f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
