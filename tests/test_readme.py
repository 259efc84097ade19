"""The README's Python snippet runs as pasted (issue 24), with the demo AMT of the tests and a tiny Trainer budget."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Using it from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_reads_its_clip_from_the_demo_amt(demo_amt: Path) -> None:
    from emoverse.data import ShardIndex

    code = python_snippet()
    assert "Image.open" not in code and "clip/frame" not in code  # no file the user does not have
    line = next(line for line in code.splitlines() if line.startswith("clip = "))
    clip = eval(line.split("=", 1)[1].split("#")[0].replace('"data/demo_amt"', repr(str(demo_amt))),  # noqa: S307
                {"ShardIndex": ShardIndex})
    assert clip.frames and all(f.size == clip.frames[0].size for f in clip.frames) and clip.text


@pytest.mark.slow  # about 40 s: four epochs of one batch, then analyze
def test_the_readme_snippet_runs(demo_amt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = python_snippet()
    assert "clip/frame" not in code and code.count('"data/demo_amt"') == 2  # its files come from the demo AMT
    budget = "max_epochs=curriculum.total_epochs,"
    assert budget in code
    code = code.replace('"data/demo_amt"', repr(str(demo_amt))).replace(
        budget, budget + " limit_train_batches=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,"
        " enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102  (the README's own code)
    answer = scope["module"].analyze(scope["clip"].frames, scope["clip"].text, tasks=["msa", "mer", "fer"])
    assert set(answer) == {"msa", "mer", "fer"}
