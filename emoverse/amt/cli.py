"""`emoverse amt build --config amt.yaml`: build AMT shards from the public releases (see docs/amt.md).

The YAML keys are the fields of `AMTBuildConfig` (sources as nested mappings); `--print_config`
shows them all with their defaults, and any key can be given on the command line
(`--workers 4`, `--meld.root ...`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from jsonargparse import ActionConfigFile, ArgumentParser

if TYPE_CHECKING:
    from emoverse.amt.build import AMTBuildConfig


def build_parser() -> ArgumentParser:
    from emoverse.amt.build import AMTBuildConfig

    parser = ArgumentParser(prog="emoverse amt build", description="Build AMT shards from CMU-MOSEI, MELD and ECF.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with the AMTBuildConfig fields")
    parser.add_class_arguments(AMTBuildConfig, None, fail_untyped=True)
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    return parser


def parse_config(argv: list[str]) -> tuple[AMTBuildConfig, bool]:
    """The `AMTBuildConfig` (and the progress flag) that `emoverse amt build ARGV` would run."""
    from emoverse.amt.build import AMTBuildConfig

    parser = build_parser()
    cfg = parser.parse_args(argv)
    init = (parser.instantiate if hasattr(parser, "instantiate") else parser.instantiate_classes)(cfg)
    return AMTBuildConfig(**{name: init[name] for name in AMTBuildConfig.__dataclass_fields__}), bool(cfg.progress)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] != ["build"]:
        print("usage: emoverse amt build --config amt.yaml [--print_config]", file=sys.stderr)
        return 2
    from emoverse.amt.build import build_amt, format_table1

    config, progress = parse_config(words[1:])
    manifest = build_amt(config, progress=progress)
    print(format_table1(manifest))
    dropped = sum(manifest["dropped"].values())
    print(f"dropped records: {dropped} {manifest['dropped']}; labels removed: {manifest['labels_removed']}")
    audio = manifest["audio"]
    if audio["enabled"]:
        print(f"records with audio: {audio['records']}; audio faults: {audio['faults']}")
    print(f"manifest: {config.output}/manifest.json")
    return 0
