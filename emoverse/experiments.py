"""Collect the test metrics of several runs into one table: `emoverse collect RUN_DIR... [--out DIR]`.

A run directory is anything below which `emoverse test` wrote a CSVLogger `metrics.csv` with
`test/{task}/{metric}` columns (e.g. `runs/ablations/table3_mer/test/metrics.csv`, as
`examples/run_ablations.sh` lays them out). Every run becomes one row; the CSV holds every test
metric, the Markdown table the paper's headline columns (or every metric with `--all`), and
results.html draws the headline columns as charts beside the paper's rows (`emoverse.report.collect`).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

PREFIX = "test/"
HEADLINE: tuple[str, ...] = ("msa/acc2_nn", "msa/acc2_np", "mer/acc", "mer/weighted_f1", "ecpe/f1", "ecpe/weighted_f1")
"""The columns of the paper's Tables 2-5: CMU-MOSEI Acc2 (N/N, N/P), MELD Acc and W-F1, ECF 2.0 F1 and W-F1."""
COUNTS: frozenset[str] = frozenset({"n", "unparsed", "ignored_pairs"})
"""Metric names that are counts, not fractions (shown as integers, not percentages)."""

Row = dict[str, "str | float"]


def read_test_metrics(run_dir: str | Path) -> dict[str, float]:
    """The test metrics logged below `run_dir`: `{"{task}/{metric}": value}`.

    Every `metrics.csv` below the directory is read, oldest first (by modification time), and for
    each `test/...` column the last non-empty value wins, so a re-run test replaces an older one.

    Raises:
        FileNotFoundError: `run_dir` is missing or holds no metrics.csv.
        ValueError: no metrics.csv below it has a test value, or a value is not a number.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    files = sorted(root.rglob("metrics.csv"), key=lambda f: (f.stat().st_mtime, str(f)))
    if not files:
        raise FileNotFoundError(f"{root}: no metrics.csv below it (run `emoverse test ...` with a CSVLogger into it)")
    values: dict[str, float] = {}
    for file in files:
        with open(file, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                for key, text in row.items():
                    if not key or not key.startswith(PREFIX) or text in (None, ""):
                        continue
                    try:
                        values[key[len(PREFIX) :]] = float(text)
                    except ValueError:
                        raise ValueError(f"{file}:{line}: column {key!r} holds {text!r}, expected a number") from None
    if not values:
        raise ValueError(f"{root}: no test/{{task}}/{{metric}} values in {[str(f) for f in files]}; "
                         "run `emoverse test` into this directory first")
    return values


def collect(run_dirs: Sequence[str | Path]) -> list[Row]:
    """One row per run: `{"run": name, "{task}/{metric}": value, ...}`, in the given order.

    The run's name is its directory's name, or the path as given where two names would clash.
    """
    if not run_dirs:
        raise ValueError("collect: no run directories given")
    names = [Path(d).name for d in run_dirs]
    rows: list[Row] = []
    for directory, name in zip(run_dirs, names):
        run = name if names.count(name) == 1 else str(directory)
        rows.append({"run": run, **read_test_metrics(directory)})
    return rows


def metric_columns(rows: Sequence[Row]) -> list[str]:
    """Every metric column of `rows`: the headline ones first (paper order), then the rest sorted."""
    present = {k for row in rows for k in row if k != "run"}
    return [c for c in HEADLINE if c in present] + sorted(present - set(HEADLINE))


def to_markdown(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """A Markdown table, a row per run; fractions as percentages with 2 decimals, counts as integers.

    Args:
        rows: `collect` output.
        columns: metric columns to show; None = the headline columns present (all if none is).
    """
    if columns is None:
        columns = [c for c in HEADLINE if any(c in row for row in rows)] or metric_columns(rows)
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        cells = [_format(column, row.get(column)) for column in columns]
        lines.append(f"| {row['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(rows: Sequence[Row], out_dir: str | Path, all_columns: bool = False) -> tuple[Path, Path]:
    """Write `results.csv` (every metric, raw values) and `results.md` into `out_dir`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = metric_columns(rows)
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["run", *columns], restval="")
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(to_markdown(rows, columns if all_columns else None), encoding="utf-8")
    return md_path, csv_path


def _format(column: str, value: str | float | None) -> str:
    if value is None:
        return "–"
    value = float(value)
    if math.isnan(value):
        return "nan"
    return str(int(value)) if column.rsplit("/", 1)[-1] in COUNTS else f"{100 * value:.2f}"


def main(argv: list[str] | None = None) -> int:
    """`emoverse collect RUN_DIR... [--out DIR] [--all]`: print the table and write results.md, .csv and .html.

    Returns:
        0 on success, 1 when a run directory is missing or holds no test metrics (reason on stderr).
    """
    parser = argparse.ArgumentParser(prog="emoverse collect", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with a test metrics.csv below it)")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="where results.md, results.csv and results.html go (default: .)")
    parser.add_argument("--all", action="store_true", help="every test metric in results.md, not just the paper's")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.runs)
    except (OSError, ValueError) as err:
        print(f"emoverse collect: {err}", file=sys.stderr)
        return 1
    md_path, csv_path = write_results(rows, args.out, args.all)
    print(md_path.read_text(encoding="utf-8"), end="")
    from emoverse.report.collect import write_collect_report  # matplotlib only when the page is written

    page = write_collect_report(rows, args.out)
    print(f"wrote {md_path}, {csv_path} and {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
