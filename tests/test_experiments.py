"""`emoverse collect`: test metrics of several runs (CSVLogger metrics.csv files) into one table."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from emoverse.cli import main
from emoverse.experiments import collect, read_test_metrics, to_markdown, write_results


def write_metrics(path: Path, rows: list[dict[str, object]], mtime: float | None = None) -> Path:
    """A metrics.csv as CSVLogger writes it: the union of keys as header, empty cells where not logged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def make_run(root: Path, name: str, acc: float) -> Path:
    run = root / name
    write_metrics(run / "fit" / "metrics.csv", [{"epoch": 0, "step": 9, "train/loss": 1.5, "val/mer/acc": 0.2}])
    write_metrics(run / "test" / "metrics.csv", [{
        "epoch": 0, "step": 0, "test/msa/acc2_nn": 0.8551, "test/msa/acc2_np": 0.878, "test/msa/unparsed": 3.0,
        "test/mer/acc": acc, "test/mer/weighted_f1": 0.6658,
    }])
    return run


def test_collect_rows_and_tables(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "m2se", 0.6728), make_run(tmp_path, "table3_mer", 0.6674)]
    rows = collect(runs)
    assert [r["run"] for r in rows] == ["m2se", "table3_mer"]
    assert rows[0]["mer/acc"] == pytest.approx(0.6728) and "train/loss" not in rows[0] and "mer/acc" in rows[1]

    md, csv_path = write_results(rows, tmp_path / "out")
    table = md.read_text().splitlines()
    assert table[0] == "| run | msa/acc2_nn | msa/acc2_np | mer/acc | mer/weighted_f1 |"
    assert table[2] == "| m2se | 85.51 | 87.80 | 67.28 | 66.58 |"
    with open(csv_path, newline="") as f:
        saved = list(csv.DictReader(f))
    assert [r["run"] for r in saved] == ["m2se", "table3_mer"]
    assert float(saved[1]["mer/acc"]) == pytest.approx(0.6674) and saved[0]["msa/unparsed"] == "3.0"

    # --all: counts print as integers
    full = to_markdown(rows, ["msa/unparsed", "mer/acc"])
    assert "| m2se | 3 | 67.28 |" in full


def test_missing_metrics_show_as_dash(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", 0.5)
    b = tmp_path / "b"
    write_metrics(b / "test" / "metrics.csv", [{"test/ecpe/f1": 0.723, "test/ecpe/weighted_f1": 0.7221}])
    table = to_markdown(collect([a, b]))
    assert "| b | – | – | – | – | 72.30 | 72.21 |" in table


def test_newest_test_wins(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_metrics(run / "test_old" / "metrics.csv", [{"test/mer/acc": 0.1}], mtime=1_000)
    write_metrics(run / "test_new" / "metrics.csv", [{"test/mer/acc": 0.2}], mtime=2_000)
    assert read_test_metrics(run) == {"mer/acc": pytest.approx(0.2)}


def test_same_names_keep_their_paths(tmp_path: Path) -> None:
    rows = collect([make_run(tmp_path / "x", "run", 0.1), make_run(tmp_path / "y", "run", 0.2)])
    assert [r["run"] for r in rows] == [str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")]


@pytest.mark.parametrize("case", ["no-dir", "no-csv", "no-test", "bad-value"])
def test_bad_runs_are_errors(case: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    if case != "no-dir":
        run.mkdir()
    if case == "no-test":
        write_metrics(run / "metrics.csv", [{"train/loss": 1.0}])
    if case == "bad-value":
        write_metrics(run / "metrics.csv", [{"test/mer/acc": "high"}])
    message = {"no-dir": "not a directory", "no-csv": "no metrics.csv", "no-test": "no test/",
               "bad-value": r"metrics.csv:2: column 'test/mer/acc' holds 'high'"}[case]
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        collect([run])


def test_cli_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [str(make_run(tmp_path, "m2se", 0.6728))]
    assert main(["collect", *runs, "--out", str(tmp_path / "out"), "--all"]) == 0
    assert "| m2se |" in capsys.readouterr().out
    assert "msa/unparsed" in (tmp_path / "out" / "results.md").read_text()
    assert main(["collect", str(tmp_path / "nothing")]) == 1
    assert "not a directory" in capsys.readouterr().err
