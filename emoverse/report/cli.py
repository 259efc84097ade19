"""`emoverse report RUN_DIR [--out DIR]`: write a run's report.html (plots next to it in report_files/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Write the report of one run folder.

    Returns:
        0 on success, 1 when the run folder does not exist (reason on stderr).
    """
    parser = argparse.ArgumentParser(prog="emoverse report", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder, e.g. runs/lightning_logs/version_0")
    parser.add_argument("--out", type=Path, default=None, help="where report.html goes (default: the run folder)")
    args = parser.parse_args(argv)
    from emoverse.report.page import write_report  # matplotlib and torch: after --help

    try:
        path = write_report(args.run, args.out)
    except FileNotFoundError as err:
        print(f"emoverse report: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
