"""Offline scoring of generations: `emoverse score predictions.jsonl`.

Each JSONL row is one answer: `{"id", "task", "prompt", "generation", "target"}` plus an
optional `"prediction"`, which is ignored: `generation` is re-parsed with the task's parser, so
raw answers of any model can be scored the same way. `target` is what `Task.target` returns
(a float for msa, a label for mer, a text for fer/eri, the pair dict for ecpe).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REQUIRED_FIELDS: tuple[str, ...] = ("id", "task", "generation", "target")


def read_rows(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Rows of a predictions JSONL grouped by task (blank lines skipped).

    Raises:
        ValueError: a file without rows, not UTF-8, or a line that is not JSON, lacks a field of
            `REQUIRED_FIELDS` or names an unregistered task; the message gives the file and line number.
        TypeError: a line that is not a JSON object, or a `generation` that is not a string.
    """
    from emoverse.tasks import list_tasks  # tasks import torch: `emoverse score --help` stays light
    rows: dict[str, list[dict[str, Any]]] = {}
    if Path(path).is_dir():
        raise ValueError(f"{path}: a folder; expected a predictions JSONL file (e.g. {Path(path) / 'test_predictions.jsonl'})")
    with open(path, encoding="utf-8") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); expected a predictions JSONL") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise TypeError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in REQUIRED_FIELDS if k not in row]
            if missing:
                raise ValueError(f"{where}: missing field(s) {missing}; each row needs {list(REQUIRED_FIELDS)}")
            if row["task"] not in list_tasks():
                raise ValueError(f"{where}: task={row['task']!r}, expected one of {list_tasks()}")
            if not isinstance(row["generation"], str):
                raise TypeError(f"{where}: generation must be a string, got {type(row['generation']).__name__}")
            rows.setdefault(row["task"], []).append(row)
    if not rows:
        raise ValueError(f"{path}: no prediction rows (the file is empty); expected one JSON object per line "
                         f"with {list(REQUIRED_FIELDS)}")
    return rows


def score_predictions(path: str | Path, task_args: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """Score every task found in the predictions JSONL at `path`.

    Args:
        path: the JSONL.
        task_args: constructor arguments per task, as the module's `task_args` (e.g.
            `{"ecpe": {"compat": "emoverse-release"}}`), so offline scores match the run's.

    Returns:
        `{task: {metric: value}}`, tasks sorted; each task also reports `n` (its row count) and
        `unparsed` (answers its parser could not read, scored as wrong).
    """
    from emoverse.tasks import get_task  # tasks import torch: `emoverse score --help` stays light
    results: dict[str, dict[str, float]] = {}
    for name, rows in sorted(read_rows(path).items()):
        task = get_task(name, **(task_args or {}).get(name, {}))
        predictions = [task.parse_offline(row["generation"], row["target"]) for row in rows]
        metric = task.new_metric()
        try:
            task.update_metric(metric, predictions, [row["target"] for row in rows])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: task {name!r}: bad target ({err})") from None
        scores = {key: float(value) for key, value in metric.compute().items()}
        results[name] = {"n": float(len(rows)), **scores}
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """One Markdown table, a row per (task, metric); fractions as percentages, counts as ints."""
    lines = ["| task | metric | value |", "|---|---|---:|"]
    for task, scores in results.items():
        for metric, value in scores.items():
            lines.append(f"| {task} | {metric} | {_format_value(metric, value)} |")
    return "\n".join(lines)


def _format_value(metric: str, value: float) -> str:
    if metric in {"n", "unparsed", "ignored_pairs"}:
        return str(int(value))
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def main(argv: list[str] | None = None) -> int:
    """`emoverse score PREDICTIONS.jsonl`: print the scores as a Markdown table.

    Returns:
        0 on success, 1 when the file is missing or malformed (the reason goes to stderr).
    """
    parser = argparse.ArgumentParser(prog="emoverse score", description="Score a predictions JSONL offline.")
    parser.add_argument("predictions", type=Path, help="JSONL with id, task, prompt, generation, target per line")
    parser.add_argument("--task-args", type=json.loads, default=None, metavar="JSON",
                        help='per-task constructor arguments, e.g. \'{"ecpe": {"compat": "emoverse-release"}}\'')
    args = parser.parse_args(argv)
    try:
        results = score_predictions(args.predictions, args.task_args)
    except (OSError, TypeError, ValueError) as err:
        print(f"emoverse score: {err}", file=sys.stderr)
        return 1
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
