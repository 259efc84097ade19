"""The `emoverse` command: the Trainer subcommands (LightningCLI, in `emoverse.trainer_cli`) and the `TOOLS`.

This module is the console entry point and stays light: `emoverse --help` and the command list are
static text, a tool's module is imported only when it runs, and the Trainer stack (torch, Lightning,
the backbones) only for fit/validate/test/predict. Errors print as one line (`--debug` or
EMOVERSE_DEBUG=1 shows the traceback) and third-party noise is filtered (`emoverse._quiet`).
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from pathlib import Path

from emoverse._lazy import lazy_exports
from emoverse._quiet import quiet_third_party
from emoverse.cli_checks import UserError, one_line

TOOLS: dict[str, str] = {"score": "emoverse.scoring", "collect": "emoverse.experiments", "report": "emoverse.report.cli",
                         "amt": "emoverse.amt.cli", "export": "emoverse.export",
                         "smoke": "emoverse.smoke", "analyze": "emoverse.analyze_cli", "demo": "emoverse.demo_page"}
"""Subcommands that are plain tools, not Trainer runs: name -> module with `main(argv) -> int`."""


TRAINER_COMMANDS: dict[str, str] = {
    "fit": "train (--ckpt_path last resumes the newest checkpoint of the run)",
    "validate": "generate and score the val split",
    "test": "generate and score the test split; writes test_predictions.jsonl",
    "predict": "generate answers for the test split; writes predictions.jsonl",
}

# `from emoverse.cli import EmoVerseCLI, cli_kwargs` keeps working, importing Lightning only then
__getattr__, __dir__ = lazy_exports(__name__, {"EmoVerseCLI": "emoverse.trainer_cli", "cli_kwargs": "emoverse.trainer_cli"})


def describe_commands() -> str:
    """`emoverse --help`: every subcommand with its one-line summary (no module is imported)."""
    lines = ["usage: emoverse COMMAND [options]   (emoverse COMMAND --help for the options)", "",
             "Trainer runs (LightningCLI; --config my.yaml):"]
    lines += [f"  {name:<10} {summary}" for name, summary in TRAINER_COMMANDS.items()]
    lines += ["", "Tools:"]
    lines += [f"  {name:<10} {_summary(module)}" for name, module in TOOLS.items()]
    lines += ["", "Global: --debug (or EMOVERSE_DEBUG=1) shows tracebacks and third-party warnings."]
    return "\n".join(lines)


def _summary(module: str) -> str:
    """First docstring line of `module`, read from its source file without importing it or its packages
    (`importlib.util.find_spec` would import `emoverse.report`, and with it Lightning)."""
    source = _source_file(module)
    if source is None:
        return f"({module} is not installed)"
    doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else module


def _source_file(module: str) -> Path | None:
    """The .py file of `module` (a module of this package), found by path, not by import.

    Looked up beside this file rather than on `sys.path`: an editable install puts the package on a
    meta-path finder, not on `sys.path`.
    """
    package, *parts = module.split(".")
    if package != __name__.split(".")[0]:
        return None
    base = Path(__file__).resolve().parent.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _debug_requested(words: list[str]) -> bool:
    return "--debug" in words or os.environ.get("EMOVERSE_DEBUG", "").lower() not in ("", "0", "false", "no")


def print_error(command: str, err: BaseException) -> None:
    """Print `err` as `emoverse COMMAND: <one line>` and how to see the traceback."""
    print(f"emoverse {command}: {_one_line(err)}\n  (emoverse --debug ... or EMOVERSE_DEBUG=1 shows the traceback)",
          file=sys.stderr)


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
    if command in TOOLS:
        try:
            return importlib.import_module(TOOLS[command]).main(words[1:])
        except Exception as err:
            if debug:
                raise
            print_error(command, err)
            return 1
    from emoverse.trainer_cli import run

    return run(command, words, from_sys_argv=argv is None, debug=debug)


def _one_line(err: BaseException) -> str:
    """The message to print for `err` (`cli_checks.one_line`; a `UserError` is its own message)."""
    return one_line(err, stop=(UserError,))


if __name__ == "__main__":
    sys.exit(main())
