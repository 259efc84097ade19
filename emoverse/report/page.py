"""`write_report(run_dir)`: one HTML page (PNGs next to it) showing what a run learned.

Every section renders what the run left and says in words what is missing; a section whose
figure cannot be drawn shows the error instead of stopping the page.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from emoverse.report import analysis, plots
from emoverse.report.modalities import modality_sets
from emoverse.report.paper import HEADLINE_LABELS, TABLE4_EMOVERSE_4B
from emoverse.report.run import Run, checkpoint_line, load_run
from emoverse.report.stages import StageView, stage_views

log = logging.getLogger(__name__)

PAGE = "report.html"
FILES = "report_files"
SECTIONS: dict[str, str] = {
    "summary": "Run", "loss": "Training loss", "task-mix": "Task mix per stage",
    "validation": "Validation metrics per task", "headline": "Test metrics",
    "modalities": "Test metrics per modality set", "mer": "MER: emotions",
    "msa": "MSA: sentiment", "ecpe": "ECPE: emotion-cause pairs", "samples": "FER and ERI: sample answers",
    "unparsed": "Unparsed answers per task", "reinforcement": "Reinforcement (GRPO stage)",
    "preference": "Preference (DPO stage)",
}
"""Section id -> heading, in page order (every page has all of them)."""
STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;vertical-align:top}
th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
.missing{color:#8a5a00;background:#fff6e0;padding:.4em .7em;border-left:3px solid #e0a000}
img{max-width:100%;display:block;margin:.5em 0} code{background:#f3f3f3;padding:0 .2em} nav a{margin-right:.8em}
"""


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write `report.html` (and `report_files/*.png`) for the run folder `run_dir`.

    Args:
        run_dir: a run folder (`runs/lightning_logs/version_N`).
        out_dir: where the page goes; default `run_dir`.

    Returns:
        The page's path.

    Raises:
        FileNotFoundError: `run_dir` is not a directory.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    page = _Page(out)
    training = run.training
    try:
        stages, stage_notes = stage_views(training or run)
    except Exception as err:  # an odd config or curriculum.json costs the stage marks, not the page
        log.warning("report: stages of %s unreadable", run.path, exc_info=True)
        stages, stage_notes = [], [f"the curriculum's stages could not be read: {type(err).__name__}: {err}"]
    builders: dict[str, Callable[[], list[str]]] = {
        "summary": lambda: _summary(page, run, training, stages, stage_notes),
        "loss": lambda: _loss(page, training, stages),
        "task-mix": lambda: _task_mix(page, stages),
        "validation": lambda: _validation(page, training, stages),
        "headline": lambda: _headline(run),
        "modalities": lambda: _modalities(run),
        "mer": lambda: _mer(page, run),
        "msa": lambda: _msa(page, run),
        "ecpe": lambda: _ecpe(page, run),
        "samples": lambda: _samples(run),
        "unparsed": lambda: _unparsed(run),
        "reinforcement": lambda: _reinforcement(page, training, stages),
        "preference": lambda: _preference(page, training, stages),
    }
    for section, build in builders.items():
        try:
            body = build()
        except Exception as err:  # a broken figure must not cost the rest of the page
            log.warning("report section %r failed", section, exc_info=True)
            body = [_missing(f"this section could not be drawn: {type(err).__name__}: {err}")]
        page.section(section, body)
    return page.write(f"emoverse report: {run.path}")


class _Page:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.parts: list[str] = []

    def image(self, fig: Figure | None, name: str, alt: str) -> str:
        if fig is None:
            return _missing(f"nothing to draw for {alt}")
        plots.save(fig, self.out / FILES / f"{name}.png")
        return f'<img src="{FILES}/{name}.png" alt="{html.escape(alt)}">'

    def section(self, section: str, body: list[str]) -> None:
        self.parts.append(f'<section id="{section}"><h2>{SECTIONS[section]}</h2>\n' + "\n".join(body) + "\n</section>")

    def write(self, title: str) -> Path:
        nav = " ".join(f'<a href="#{k}">{v}</a>' for k, v in SECTIONS.items())
        text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>\n"
                + "\n".join(self.parts) + "\n</body></html>\n")
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / PAGE
        path.write_text(text, encoding="utf-8")
        return path


# sections -----------------------------------------------------------------------------------------

def _summary(page: _Page, run: Run, training: Run | None, stages: list[StageView], stage_notes: list[str]) -> list[str]:
    model = _init_args(run, "model") or run.hparams
    data = _init_args(run, "data")
    steps = [row["step"] for row in (training or run).metrics if "step" in row]
    facts = [
        ("folder", str(run.path)),
        ("backbone", str(model.get("backbone", "–"))),
        ("data", str(data.get("path", "–")) + (" (demo AMT)" if data.get("demo") else "")),
        ("stages", ", ".join(f"{s.name} ({s.epochs or '?'} epochs)" for s in stages) or "–"),
        ("steps logged", f"{int(max(steps))}" if steps else "–"),
        ("checkpoint", checkpoint_line(run)),
        ("predictions", f"{run.predictions_file} ({len(run.predictions)} rows)" if run.predictions_file else "–"),
    ]
    if training is not None and training is not run:
        facts.append(("training curves from", str(training.path)))
    body = [_table(["", ""], [[k, html.escape(v)] for k, v in facts], show_header=False)]
    notes = run.notes + (training.notes if training is not None and training is not run else []) + stage_notes
    if notes:
        body.append("<p>Missing or damaged:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return body


def _loss(page: _Page, training: Run | None, stages: list[StageView]) -> list[str]:
    if training is None:
        return [_missing("no train/loss values in metrics.csv (not a fit run, or it logged no step)")]
    body = [page.image(plots.loss_figure(training, stages), "loss", "training loss per task")]
    if len(stages) > 1 and not any(s.first_step for s in stages[1:]):
        body.append(_missing(f"the run stopped in stage 1 ({stages[0].name}): no later stage was reached"))
    return body


def _reinforcement(page: _Page, training: Run | None, stages: list[StageView]) -> list[str]:
    fig = plots.grpo_figure(training, stages) if training is not None else None
    if fig is None:  # most runs have no GRPO stage: a plain note, not a gap
        return ["<p>No reinforcement stage in this run (no train/grpo/* values; docs/grpo.md).</p>"]
    return [page.image(fig, "grpo", "GRPO stage: reward, reward std, KL, answer length, unparsed share")]


def _preference(page: _Page, training: Run | None, stages: list[StageView]) -> list[str]:
    fig = plots.preference_figure(training, stages) if training is not None else None
    if fig is None:
        return ["<p>No preference stage in this run (no train/preference/* values; docs/preference.md).</p>"]
    return [page.image(fig, "preference", "preference stage: implicit-reward accuracy and margin, implicit and task "
                                          "rewards of the chosen and rejected answers, pairs and skipped groups, "
                                          "reward terms per task")]


def _task_mix(page: _Page, stages: list[StageView]) -> list[str]:
    if not stages:
        return [_missing("no curriculum: neither curriculum.json nor a `curriculum:` in config.yaml")]
    body = [page.image(plots.task_mix_figure(stages), "task_mix", "planned and drawn task mix per stage")]
    rows = []
    for stage in stages:
        total = sum(stage.drawn.values())
        for task in dict.fromkeys([*stage.ratios, *stage.drawn]):
            share = f"{stage.drawn.get(task, 0) / total:.3f}" if total else "–"
            planned = stage.ratios.get(task, 0.0) / (sum(stage.ratios.values()) or 1.0)
            rows.append([html.escape(stage.name), task, f"{stage.ratios.get(task, 0):g}", f"{planned:.3f}",
                         str(stage.drawn.get(task, "–")) if total else "not reached", share])
    body.append(_table(["stage", "task", "ratio", "planned share", "drawn", "drawn share"], rows))
    if stages and not all(s.exact for s in stages if s.drawn):
        body.append(_missing("drawn counts are the last logged curriculum/*_seen values (no curriculum.json)"))
    return body


def _validation(page: _Page, training: Run | None, stages: list[StageView]) -> list[str]:
    fig = plots.validation_figure(training, stages) if training is not None else None
    if fig is None:
        return [_missing("no val/{task}/{metric} values: validation did not run (check_val_every_n_epoch, "
                         "or the run stopped before its first evaluation)")]
    return [page.image(fig, "validation", "validation metrics per task at each evaluation")]


def _headline(run: Run) -> list[str]:
    metrics = run.last("test/")
    if not metrics:
        return [_missing("no test/{task}/{metric} values: run `emoverse test --ckpt_path ...` and report its folder")]
    paper, why = _paper_comparable(run)
    columns = ["metric", "this run"] + (["paper, Table 4 (EmoVerse-4B)"] if paper else [])
    rows = []
    for key in [k for k in HEADLINE_LABELS if k in metrics]:
        row = [html.escape(HEADLINE_LABELS[key]), _percent(key, metrics[key])]
        if paper:
            row.append(f"{TABLE4_EMOVERSE_4B[key]:.2f}")
        rows.append(row)
    body = [_table(columns, rows)] if rows else []
    rest = [[html.escape(k), _percent(k, metrics[k])] for k in sorted(metrics) if k not in HEADLINE_LABELS]
    if rest:
        body.append(f"<details><summary>every other test metric ({len(rest)})</summary>"
                    + _table(["metric", "this run"], rest) + "</details>")
    missing = [HEADLINE_LABELS[k] for k in HEADLINE_LABELS if k not in metrics]
    if missing:
        body.append(_missing("not in this run's test metrics (no test pairs for the task?): " + ", ".join(missing)))
    body.append(f"<p>{html.escape(why)}</p>")
    return body


def _modalities(run: Run) -> list[str]:
    sets = modality_sets(run)
    if len(sets) < 2:
        return ["<p>One modality set tested. For an ablation, <code>emoverse test</code> the same checkpoint once per "
                "set (<code>--data.init_args.drop_modalities [audio]</code>, <code>[frames]</code>, "
                "<code>[text]</code>) into the same log folder: their metrics appear here side by side.</p>"]
    keys = [k for k in HEADLINE_LABELS if any(k in m for m in sets.values())]
    rows = [[html.escape(HEADLINE_LABELS[k]), *(_percent(k, m[k]) if k in m else "–" for m in sets.values())]
            for k in keys]
    return [_table(["metric", *map(html.escape, sets)], rows),
            f"<p>The same checkpoint tested {len(sets)} times, each time with the named modalities left out of every "
            "prompt (percent).</p>"]


def _paper_comparable(run: Run) -> tuple[bool, str]:
    data = _init_args(run, "data")
    if data.get("demo") or any(str(r.get("id", "")).startswith("demo-") for r in run.predictions):
        return False, ("The paper's figures (Table 4) are not shown: this run's test set is the synthetic demo AMT, "
                       "not CMU-MOSEI / MELD / ECF 2.0.")
    return True, ("Fractions as percentages. The paper's column is the published EmoVerse-4B result, comparable "
                  "when this AMT's test split holds the official CMU-MOSEI, MELD and ECF 2.0 test sets.")


def _rows(run: Run, task: str) -> list[dict[str, Any]] | str:
    """The task's rows with targets, or why there are none."""
    if not run.predictions:
        return "no predictions file, so no per-answer analysis"
    if not run.with_targets:
        return f"{run.predictions_file.name} has no targets (an `emoverse predict` file); run `emoverse test`"
    rows = [r for r in run.predictions if r["task"] == task]
    return rows or f"no {task} rows in {run.predictions_file.name} (the test split has no {task} pairs?)"


def _mer(page: _Page, run: Run) -> list[str]:
    rows = _rows(run, "mer")
    if isinstance(rows, str):
        return [_missing(rows)]
    confusion = analysis.mer_confusion(rows)
    body = [page.image(plots.confusion_figure(confusion, f"MER confusion ({len(rows)} answers)"), "mer_confusion",
                       "MER confusion matrix"),
            page.image(plots.f1_figure(analysis.f1_scores(confusion), "MER F1 per emotion"), "mer_f1",
                       "MER F1 per emotion")]
    return body + _skipped(confusion.skipped, "mer")


def _msa(page: _Page, run: Run) -> list[str]:
    rows = _rows(run, "msa")
    if isinstance(rows, str):
        return [_missing(rows)]
    sentiment = analysis.msa_polarity(rows)
    return [page.image(plots.sentiment_figure(sentiment), "msa", "MSA polarity and score distribution"),
            *_skipped(sentiment.confusion.skipped, "msa")]


def _ecpe(page: _Page, run: Run) -> list[str]:
    rows = _rows(run, "ecpe")
    if isinstance(rows, str):
        return [_missing(rows)]
    pairs = analysis.ecpe_pairs(rows)
    scores = pairs.f1()
    body = [page.image(plots.f1_figure(scores, "ECPE pair F1 per emotion") if scores else None, "ecpe_f1",
                       "ECPE F1 per emotion"),
            page.image(plots.cause_distance_figure(pairs) if pairs.hit_distances or pairs.missed_distances else None,
                       "ecpe_distance", "gold pairs by emotion-cause distance")]
    body.append(f"<p>{sum(pairs.tp.values())} of {sum(pairs.tp.values()) + sum(pairs.fn.values())} gold pairs found; "
                f"{sum(pairs.fp.values())} predicted pairs not in the gold set. Exact (emotion turn, cause turn, "
                "emotion) matches, computed from the predictions file.</p>")
    return body + _skipped(pairs.skipped, "ecpe")


def _samples(run: Run) -> list[str]:
    body = []
    for task in ("fer", "eri"):
        rows = [r for r in run.predictions if r["task"] == task]
        if not rows:
            body.append(_missing(f"{task}: no answers in the predictions file" if run.predictions
                                 else f"{task}: no predictions file"))
            continue
        shown = analysis.samples(rows, 6)
        table = [[html.escape(str(r.get("id", ""))), html.escape(str(r.get("generation", ""))),
                  html.escape(str(r.get("target", "–")))] for r in shown]
        body.append(f"<h3>{task.upper()} ({len(shown)} of {len(rows)})</h3>"
                    + _table(["id", "answer", "reference"], table))
    return body


def _unparsed(run: Run) -> list[str]:
    counts = analysis.unparsed_counts(run.predictions)
    if not counts:
        logged = run.last("test/")
        rows = [[k.split("/")[0], "–", str(int(v)), "–"] for k, v in logged.items() if k.endswith("/unparsed")]
        if not rows:
            return [_missing("no predictions file and no test/{task}/unparsed metrics")]
        return [_table(["task", "answers", "unparsed (logged)", "share"], rows)]
    rows = [[task, str(n), str(bad), f"{bad / n:.1%}" if n else "–"] for task, (n, bad) in counts.items()]
    return [_table(["task", "answers", "unparsed", "share"], rows)]


# helpers ------------------------------------------------------------------------------------------

def _init_args(run: Run, key: str) -> dict[str, Any]:
    """`config[key]["init_args"]` (LightningCLI's `class_path`/`init_args` form), `{}` when it has another shape."""
    section = run.config.get(key)
    args = section.get("init_args") if isinstance(section, dict) else None
    return args if isinstance(args, dict) else {}


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _skipped(n: int, task: str) -> list[str]:
    return [_missing(f"{n} {task} row(s) skipped: target or prediction of an unexpected shape")] if n else []


def _percent(key: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    return str(int(value)) if key.rsplit("/", 1)[-1] in plots.COUNT_METRICS else f"{100 * value:.2f}"


def _table(columns: list[str], rows: list[list[str]], show_header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>" if show_header else ""
    body = "".join("<tr>" + "".join(f"<td{_num(c)}>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _num(cell: str) -> str:
    try:
        float(cell.rstrip("%"))
    except ValueError:
        return ""
    return ' class="n"'
