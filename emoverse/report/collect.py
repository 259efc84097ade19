"""`emoverse collect`'s page: every run's headline test metrics as charts, beside the paper's rows.

A run is matched to a paper row by its name (the names `examples/run_ablations.sh` gives its runs,
see `ABLATION_ROWS`); other runs are drawn without a paper bar.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from emoverse.report import plots
from emoverse.report.paper import ABLATION_ROWS, HEADLINE_LABELS

PAGE = "results.html"
FILES = "results_files"


def write_collect_report(rows: Sequence[dict[str, str | float]], out_dir: str | Path) -> Path:
    """Write `results.html` and one chart per headline metric (`results_files/*.png`) into `out_dir`.

    Args:
        rows: `emoverse.experiments.collect` output: `{"run": name, "{task}/{metric}": value}` (fractions).

    Returns:
        The page's path.
    """
    out = Path(out_dir)
    runs = [str(row["run"]) for row in rows]
    paper = [ABLATION_ROWS.get(Path(run).name) for run in runs]
    parts = [f"<h1>{len(runs)} runs: test metrics beside the paper's rows</h1>"]
    drawn = 0
    for key, label in HEADLINE_LABELS.items():
        ours = [_percent(row.get(key)) for row in rows]
        if all(v is None for v in ours):
            continue
        theirs = [p[1].get(key) if p else None for p in paper]
        series = {"run": ours} | ({"paper (EmoVerse-4B)": theirs} if any(v is not None for v in theirs) else {})
        name = key.replace("/", "_")
        plots.save(plots.grouped_bars(runs, series, label, "%"), out / FILES / f"{name}.png")
        parts.append(f'<h2>{html.escape(label)}</h2><img src="{FILES}/{name}.png" alt="{html.escape(label)}">')
        drawn += 1
    if not drawn:
        parts.append('<p class="missing">None of the runs has a headline metric '
                     f"({', '.join(HEADLINE_LABELS)}); see results.md for the others.</p>")
    header = "".join(f"<th>{html.escape(HEADLINE_LABELS[k])}</th>" for k in HEADLINE_LABELS)
    table = [f"<table><tr><th>run</th><th>paper row</th>{header}</tr>"]
    for row, match in zip(rows, paper):
        cells = "".join(f"<td>{_cell(row.get(k), match[1].get(k) if match else None)}</td>" for k in HEADLINE_LABELS)
        table.append(f"<tr><td>{html.escape(str(row['run']))}</td><td>{html.escape(match[0]) if match else '–'}</td>"
                     f"{cells}</tr>")
    parts.append("<h2>Table</h2><p>This run's value, then the paper's in parentheses (percent).</p>"
                 + "".join(table) + "</table>")
    out.mkdir(parents=True, exist_ok=True)
    path = out / PAGE
    path.write_text('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>emoverse collect</title>'
                    "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}"
                    "td,th{border:1px solid #ccc;padding:.2em .5em}table{border-collapse:collapse}"
                    "img{max-width:100%}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n",
                    encoding="utf-8")
    return path


def _percent(value: str | float | None) -> float | None:
    return None if value is None or value == "" else 100 * float(value)


def _cell(ours: str | float | None, theirs: float | None) -> str:
    mine = _percent(ours)
    text = "–" if mine is None else f"{mine:.2f}"
    return text + (f" ({theirs:.2f})" if theirs is not None else "")
