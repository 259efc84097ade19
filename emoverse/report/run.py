"""What a run folder holds, read leniently: any piece may be missing or damaged, and every gap is noted.

A run folder is what one `emoverse fit|test|predict` leaves (CSVLogger's `version_N/`):
`metrics.csv`, `hparams.yaml`, `config.yaml` (LightningCLI), `curriculum.json` (`RunReport`),
`test_predictions.jsonl` (`test`), `predictions.jsonl` (`predict`) or `val_predictions.jsonl`
(the last validation of `fit`), `checkpoints/`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DRAWS_FILE = "curriculum.json"
"""Written by `RunReport` during `fit`: the planned stages and the tasks drawn per epoch."""
PREDICTION_FILES: tuple[tuple[str, bool], ...] = (("test_predictions*.jsonl", True), ("predictions*.jsonl", False),
                                                   ("val_predictions*.jsonl", True))
"""Predictions files, in order of preference, and whether their rows carry targets."""


@dataclass
class Run:
    """Everything a report draws from one run folder.

    Attributes:
        path: the run folder.
        metrics: metrics.csv rows, numbers only (`{"step": 9.0, "train/loss": 1.2, ...}`).
        config: config.yaml (LightningCLI's resolved config), `{}` when absent.
        hparams: hparams.yaml, `{}` when absent.
        draws: curriculum.json, None when absent.
        predictions: the predictions JSONL's readable rows.
        predictions_file: where they came from.
        with_targets: whether the rows carry `target` (a test file, not a predict one).
        train: the fit run whose checkpoint this run evaluated, when it is not this run itself.
        notes: what is missing or damaged, in words, for the page.
    """

    path: Path
    metrics: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    draws: dict[str, Any] | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    predictions_file: Path | None = None
    with_targets: bool = False
    train: Run | None = None
    notes: list[str] = field(default_factory=list)

    def columns(self, prefix: str = "") -> list[str]:
        """Metric columns starting with `prefix`, in first-seen order."""
        return list(dict.fromkeys(k for row in self.metrics for k in row if k.startswith(prefix)))

    def series(self, column: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(x values, column values) of the rows that hold both."""
        pairs = [(row[x], row[column]) for row in self.metrics if column in row and x in row]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def last(self, prefix: str) -> dict[str, float]:
        """`{column without prefix: last logged value}` for columns starting with `prefix`."""
        values: dict[str, float] = {}
        for row in self.metrics:
            for key, value in row.items():
                if key.startswith(prefix):
                    values[key[len(prefix):]] = value
        return values

    @property
    def training(self) -> Run | None:
        """The run that holds the training curves: this one, or the fit run its checkpoint came from."""
        if self.columns("train/"):
            return self
        return self.train if self.train is not None and self.train.columns("train/") else None


def checkpoint_line(run: Run) -> str:
    """Which checkpoint the run's figures come from, in words: the `ckpt_path` it read (a test run, or a
    resumed fit) and the newest checkpoint it wrote under `checkpoints/` (what `emoverse test --ckpt_path`
    of this run would read)."""
    parts = []
    ckpt = run.config.get("ckpt_path")
    if isinstance(ckpt, str) and ckpt:
        parts.append(f"read {ckpt}")
    written = [p for p in (run.path / "checkpoints").glob("*.ckpt") if p.is_file() and not p.name.startswith(".")]
    if written:
        newest = max(written, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))
        parts.append(f"wrote {newest}" + (f" (newest of {len(written)})" if len(written) > 1 else ""))
    return "; ".join(parts) or "none read or written"


def load_run(path: str | Path, follow_checkpoint: bool = True, predictions: bool = True) -> Run:
    """Read a run folder; nothing raises for a missing or damaged file, it becomes a note.

    Args:
        path: the run folder.
        follow_checkpoint: for a `test` run, also load the fit run that wrote its `ckpt_path`.
        predictions: read the predictions JSONL.

    Raises:
        FileNotFoundError: `path` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (expected a run folder such as runs/lightning_logs/version_0)")
    run = Run(path=root)
    run.metrics = _read_metrics(root / "metrics.csv", run.notes)
    run.config = _read_yaml(root / "config.yaml", run.notes, "the resolved config (LightningCLI's config.yaml)")
    run.hparams = _read_yaml(root / "hparams.yaml", run.notes, "the module's hyperparameters")
    run.draws = _read_json(root / DRAWS_FILE, run.notes)
    if predictions:
        _read_predictions(run)
    if follow_checkpoint and not run.columns("train/"):
        fit_dir = _fit_dir_of(run)
        if fit_dir is not None:
            run.train = load_run(fit_dir, follow_checkpoint=False, predictions=False)
    return run


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, float]]:
    if not path.is_file():
        notes.append(f"{path.name}: not found; no curves, no logged metrics")
        return []
    rows, bad = [], []
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for line, raw in enumerate(csv.DictReader(f), start=2):
                row = {}
                for key, text in raw.items():
                    if not key or text in (None, ""):
                        continue
                    try:
                        value = float(text)
                    except (TypeError, ValueError):
                        bad.append(f"line {line} column {key!r}")
                        continue
                    if math.isfinite(value) or key in ("step", "epoch"):
                        row[key] = value
                if row:
                    rows.append(row)
    except (OSError, csv.Error) as err:
        notes.append(f"{path.name}: unreadable ({err}); kept the {len(rows)} rows before the error")
    if bad:
        notes.append(f"{path.name}: {len(bad)} cell(s) that are not numbers were skipped (first: {bad[0]})")
    if not rows:
        notes.append(f"{path.name}: holds no values")
    return rows


def _read_yaml(path: Path, notes: list[str], what: str) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path.name}: not found; {what} not shown")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        notes.append(f"{path.name}: unreadable ({type(err).__name__}); {what} not shown")
        return {}
    if not isinstance(data, dict):
        notes.append(f"{path.name}: expected a mapping, found {type(data).__name__}; {what} not shown")
        return {}
    return data


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        notes.append(f"{path.name}: unreadable ({err}); draws per stage come from metrics.csv instead")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name}: expected a JSON object, found {type(data).__name__}")
        return None
    return data


def _read_predictions(run: Run) -> None:
    """The first predictions files found (all ranks' files of one kind), bad lines counted and skipped."""
    custom = run.hparams.get("predictions_path")
    for pattern, with_targets in PREDICTION_FILES:
        files = sorted(run.path.glob(pattern))
        if not files and with_targets and isinstance(custom, str) and Path(custom).is_file():
            files = [Path(custom)]
        if files:
            break
    else:
        run.notes.append("no predictions file (test_predictions.jsonl from `emoverse test`, predictions.jsonl "
                         "from `emoverse predict`, or val_predictions.jsonl from a validation during `fit`); "
                         "the per-task analyses need one")
        return
    run.predictions_file, run.with_targets = files[0], with_targets
    bad: list[str] = []
    for file in files:
        try:
            f = open(file, encoding="utf-8", errors="replace")  # noqa: SIM115  (closed by the with below)
        except OSError as err:
            run.notes.append(f"{file.name}: unreadable ({err})")
            continue
        with f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad.append(f"{file.name}:{number}")
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("task"), str):
                    bad.append(f"{file.name}:{number}")
                    continue
                run.predictions.append(row)
    if bad:
        run.notes.append(f"{len(bad)} malformed predictions line(s) skipped (not a JSON object with a 'task'): "
                         + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not run.predictions:
        run.notes.append(f"{files[0].name}: no readable rows")


def _fit_dir_of(run: Run) -> Path | None:
    """The fit run that wrote this run's `ckpt_path` (its `checkpoints/` folder's parent), if found."""
    ckpt = run.config.get("ckpt_path")
    if not isinstance(ckpt, str) or not ckpt:
        return None
    candidates = [Path(ckpt)] if Path(ckpt).is_absolute() else [Path(ckpt), *(a / ckpt for a in run.path.resolve().parents)]
    for candidate in candidates:
        folder = candidate.parent.parent if candidate.parent.name == "checkpoints" else candidate.parent
        if (folder / "metrics.csv").is_file() and folder.resolve() != run.path.resolve():
            return folder
    run.notes.append(f"ckpt_path {ckpt}: its fit run folder was not found; training curves not shown")
    return None
