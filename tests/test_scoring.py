"""Offline scoring of a predictions JSONL: re-parsing, per-task metrics, table, CLI, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emoverse.scoring import format_table, main, score_predictions

ECPE_TARGET = {"dialogue_id": "1375", "turn": 5, "emotion": "surprise", "pairs": [[5, 2, "surprise"], [5, 5, "surprise"]]}
ROWS = [
    {"id": "a", "task": "msa", "prompt": "q", "generation": "Positive.", "target": 1.2},
    {"id": "b", "task": "msa", "prompt": "q", "generation": "It is negative", "target": 0.0},
    {"id": "c", "task": "msa", "prompt": "q", "generation": "hmm", "target": -2.0, "prediction": 1.0},
    {"id": "d", "task": "mer", "prompt": "q", "generation": "Happy.", "target": "joy"},
    {"id": "e", "task": "mer", "prompt": "q", "generation": "Anger.", "target": "fear"},
    {"id": "f", "task": "ecpe", "prompt": "q", "generation": "The causes are utterances 2 and 9.", "target": ECPE_TARGET},
    {"id": "g", "task": "fer", "prompt": "q", "generation": "Jaw drop.", "target": "jaw drop"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


def test_scores_every_task_from_raw_generations(tmp_path):
    results = score_predictions(write_jsonl(tmp_path / "p.jsonl", ROWS))
    assert list(results) == ["ecpe", "fer", "mer", "msa"]
    msa = results["msa"]
    # "prediction" is ignored: "hmm" is re-parsed as unparsable, scored wrong and counted.
    assert msa["n"] == 3 and msa["unparsed"] == 1
    assert msa["acc2_nn"] == pytest.approx(1 / 3)  # a right; b: negative vs 0.0 (non-negative) wrong; c wrong
    assert msa["acc2_np"] == pytest.approx(1 / 2)  # b dropped (truth 0)
    assert results["mer"]["acc"] == pytest.approx(1 / 2) and results["mer"]["unparsed"] == 0
    ecpe = results["ecpe"]  # bare indices read with the target's turn and emotion; 9 > turn 5 ignored
    assert ecpe["precision"] == pytest.approx(1.0) and ecpe["recall"] == pytest.approx(0.5) and ecpe["ignored_pairs"] == 1
    assert results["fer"]["exact_match"] == 1.0


def test_table_and_cli(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    table = format_table(score_predictions(path))
    lines = table.splitlines()
    assert lines[0] == "| task | metric | value |"
    assert "| msa | acc2_nn | 33.33 |" in lines and "| msa | unparsed | 1 |" in lines
    assert main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == table


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"p\.jsonl:2: not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"id": "x", "task": "msa", "generation": "Positive."}', r"missing field\(s\) \['target'\]"),
        ('{"id": "x", "task": "vqa", "generation": "", "target": 1}', "task='vqa', expected one of"),
        ('{"id": "x", "task": "mer", "generation": "Joy.", "target": "happy"}', "task 'mer': bad target"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises((TypeError, ValueError), match=message):
        score_predictions(path)


def test_cli_reports_errors_on_stderr(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


def test_task_args_reach_the_scorer(tmp_path) -> None:
    """A false pair on an utterance without gold cause counts under SemEval, not under the release's rule."""
    import json

    from emoverse.scoring import main, score_predictions

    target = {"dialogue_id": "d1", "turn": 3, "emotion": "joy", "pairs": []}
    gold = {"dialogue_id": "d1", "turn": 4, "emotion": "joy", "pairs": [[4, 2, "joy"]]}
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "task": "ecpe", "generation": "3_joy,1", "target": target},
        {"id": "b", "task": "ecpe", "generation": "4_joy,2", "target": gold},
    ]))
    semeval = score_predictions(path)["ecpe"]
    release = score_predictions(path, {"ecpe": {"compat": "emoverse-release"}})["ecpe"]
    assert semeval["precision"] == pytest.approx(0.5, abs=1e-6)
    assert release["precision"] == pytest.approx(1.0, abs=1e-6)
    assert main([str(path), "--task-args", '{"ecpe": {"compat": "emoverse-release"}}']) == 0
