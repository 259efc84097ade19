"""The report's figures (matplotlib, Agg backend: no display, nothing fetched)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: a report is written on headless machines and inside training

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from emoverse.report.analysis import CausePairs, Confusion, Sentiment  # noqa: E402
from emoverse.report.run import Run  # noqa: E402
from emoverse.report.stages import StageView  # noqa: E402

COUNT_METRICS = frozenset({"unparsed", "ignored_pairs", "n"})
"""Logged metrics that are counts, not fractions in [0, 1] (left out of the fraction plots)."""
STAGE_COLOURS = ("#dbe9f6", "#fde9d9", "#e2f0d9", "#ede2f6")


def save(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _mark_stages(ax: plt.Axes, stages: Sequence[StageView], end: float) -> None:
    """Shade each reached stage's steps and name it; a dashed line where a later stage starts."""
    starts = [(s.first_step if i else 0.0, s.name) for i, s in enumerate(stages) if s.first_step is not None or i == 0]
    for k, (start, name) in enumerate(starts):
        stop = starts[k + 1][0] if k + 1 < len(starts) else end
        ax.axvspan(start, max(stop, start), color=STAGE_COLOURS[k % len(STAGE_COLOURS)], alpha=0.5, lw=0)
        if k:
            ax.axvline(start, color="grey", ls="--", lw=1)
        ax.text(start, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="dimgrey")


def loss_figure(run: Run, stages: Sequence[StageView]) -> Figure:
    """Training loss against the step: overall (thick) and per task, stages shaded."""
    fig, ax = plt.subplots(figsize=(9, 4))
    columns = ["train/loss", *sorted(c for c in run.columns("train/") if c.endswith("/loss") and c != "train/loss")]
    end = 0.0
    for column in columns:
        steps, values = run.series(column)
        if not steps:
            continue
        end = max(end, max(steps))
        name = "overall" if column == "train/loss" else column.split("/")[1]
        ax.plot(steps, values, lw=2.2 if name == "overall" else 1.1, color="black" if name == "overall" else None,
                label=name, marker="." if len(steps) < 30 else None)
    _mark_stages(ax, stages, end)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if _spread(run, columns) > 20 else "linear")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    return fig


GRPO_PANELS = (("reward", "mean reward (per task: thin)"), ("reward_std", "reward std within groups"),
               ("kl", "KL to the reference (per token)"), ("answer_length", "answer length (tokens)"),
               ("unparsed", "share of unparsed answers"), ("terms", "reward terms per task"))


def grpo_figure(run: Run, stages: Sequence[StageView]) -> Figure | None:
    """A GRPO stage's `train/grpo/*` series against the step (per-task rewards beside the mean); None without one."""
    if not run.columns("train/grpo/"):
        return None
    fig, axes = plt.subplots(2, 3, figsize=(3.4 * 3, 6.0), squeeze=False)
    axes = [list(axes.flat)]
    rewards = sorted(c for c in run.columns("train/") if c.endswith("/reward") and not c.startswith("train/grpo/"))
    for ax, (key, title) in zip(axes[0], GRPO_PANELS):
        if key == "terms":
            _terms_panel(ax, run, title)
            continue
        steps, values = run.series(f"train/grpo/{key}")
        if key == "reward":
            for column in rewards:
                s, v = run.series(column)
                ax.plot(s, v, lw=1.0, label=column.split("/")[1], marker="." if len(s) < 30 else None)
        ax.plot(steps, values, lw=2.0, color="black", label="mean" if key == "reward" else None,
                marker="." if len(steps) < 30 else None)
        if steps:
            ax.set_xlim(min(steps), max(steps) + 1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "reward":
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _terms_panel(ax: Axes, run: Run, title: str) -> None:
    """Each weighted reward term per task (`train/{task}/reward/{term}`), so a term the policy games shows."""
    for column in sorted(c for c in run.columns("train/") if "/reward/" in c):
        s, v = run.series(column)
        _, task, _, term = column.split("/", 3)
        ax.plot(s, v, lw=1.0, label=f"{task} {term}", marker="." if len(s) < 30 else None)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=6, ncol=2)


PREFERENCE_PANELS = (
    ("accuracy", ("accuracy",), "implicit-reward accuracy"),
    ("margin", ("reward_margin",), "implicit reward margin"),
    ("implicit", ("chosen_reward", "rejected_reward"), "implicit rewards (chosen, rejected)"),
    ("task", ("chosen_task_reward", "rejected_task_reward", "reward"), "task rewards (chosen, rejected, all)"),
    ("pairs", ("pairs", "skipped"), "groups with a pair / skipped (equal rewards)"),
)


def preference_figure(run: Run, stages: Sequence[StageView]) -> Figure | None:
    """A preference stage's `train/preference/*` series against the step, and the reward terms per task; None
    without one."""
    if not run.columns("train/preference/"):
        return None
    fig, grid = plt.subplots(2, 3, figsize=(3.4 * 3, 6.0), squeeze=False)
    axes = list(grid.flat)
    for ax, (_, keys, title) in zip(axes, PREFERENCE_PANELS):
        for key in keys:
            steps, values = run.series(f"train/preference/{key}")
            ax.plot(steps, values, lw=1.6, label=key, marker="." if len(steps) < 30 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    _terms_panel(axes[-1], run, "reward terms per task")
    fig.tight_layout()
    return fig


def _spread(run: Run, columns: Sequence[str]) -> float:
    values = [v for c in columns for v in run.series(c)[1] if v > 0]
    return max(values) / min(values) if values else 1.0


def task_mix_figure(stages: Sequence[StageView]) -> Figure:
    """Per stage: the planned share of each task against the share actually drawn (counts on the bars)."""
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        tasks = list(dict.fromkeys([*stage.ratios, *stage.drawn]))
        total_ratio = sum(stage.ratios.values()) or 1.0
        total_drawn = sum(stage.drawn.values())
        x = range(len(tasks))
        planned = [stage.ratios.get(t, 0.0) / total_ratio for t in tasks]
        ax.bar([i - 0.2 for i in x], planned, width=0.4, label="planned", color="#9ecae1")
        if total_drawn:
            drawn = [stage.drawn.get(t, 0) / total_drawn for t in tasks]
            bars = ax.bar([i + 0.2 for i in x], drawn, width=0.4, label="drawn", color="#3182bd")
            for bar, task in zip(bars, tasks):
                ax.annotate(str(stage.drawn.get(task, 0)), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        else:
            ax.text(0.5, 0.5, "not reached", transform=ax.transAxes, ha="center", color="grey")
        ratio = ":".join(f"{stage.ratios[t]:g}" for t in stage.ratios)
        ax.set_title(f"{stage.name}  ({':'.join(stage.ratios)} = {ratio})", fontsize=9)
        ax.set_xticks(list(x), tasks)
        ax.set_ylabel("share of samples")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def validation_figure(run: Run, stages: Sequence[StageView], split: str = "val") -> Figure | None:
    """Every `{split}/{task}/{metric}` fraction against the step, one panel per task; None when none was logged."""
    tasks: dict[str, list[str]] = {}
    for column in run.columns(f"{split}/"):
        parts = column.split("/")
        if len(parts) == 3 and not _detail(parts[2]):
            tasks.setdefault(parts[1], []).append(column)
    if not tasks:
        return None
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    end = max((row["step"] for row in run.metrics if "step" in row), default=0.0)
    for ax, (task, columns) in zip(axes.flat, tasks.items()):
        for column in columns:
            steps, values = run.series(column)
            ax.plot(steps, values, marker="o", label=column.split("/")[2])
        _mark_stages(ax, stages, end)
        ax.set_title(task, fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _detail(metric: str) -> bool:
    """Metrics left out of the validation panels: counts, precision/recall and ECPE's per-emotion F1."""
    return (metric in COUNT_METRICS or "precision" in metric or "recall" in metric
            or (metric.startswith("f1_") and metric[3:] not in ("nn", "np")))


def confusion_figure(confusion: Confusion, title: str) -> Figure:
    """A confusion matrix as a heat map, counts in the cells."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(confusion.columns), 0.9 + 0.6 * len(confusion.labels)))
    _heatmap(ax, confusion, title)
    fig.tight_layout()
    return fig


def _heatmap(ax: plt.Axes, confusion: Confusion, title: str) -> None:
    ax.imshow(confusion.matrix, cmap="Blues")
    peak = max((v for row in confusion.matrix for v in row), default=0)
    for i, row in enumerate(confusion.matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if peak and value > peak / 2 else "black")
    ax.set_xticks(range(len(confusion.columns)), confusion.columns, rotation=35, ha="right")
    ax.set_yticks(range(len(confusion.labels)), confusion.labels)
    ax.set_xlabel("answer")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=10)


def f1_figure(scores: dict[str, float], title: str) -> Figure:
    """Per-label F1 as bars (labels without gold or answers show as n/a)."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(scores), 3.0))
    labels = list(scores)
    values = [0.0 if math.isnan(v) else v for v in scores.values()]
    bars = ax.bar(labels, values, color="#6baed6")
    for bar, value in zip(bars, scores.values()):
        ax.annotate("n/a" if math.isnan(value) else f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("F1")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def sentiment_figure(sentiment: Sentiment) -> Figure:
    """MSA: polarity confusion (left) and the gold scores of right and wrong answers (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [1, 1.4]})
    _heatmap(left, sentiment.confusion, "polarity (Acc2 N/N split)")
    bins = [x / 2 for x in range(-6, 7)]
    right.hist([sentiment.correct_scores, sentiment.wrong_scores], bins=bins, stacked=True,
               label=["right polarity", "wrong or unparsed"], color=["#74c476", "#fb6a4a"])
    right.axvline(0, color="grey", lw=1)
    right.set_xlabel("gold sentiment score")
    right.set_ylabel("segments")
    right.set_title("gold score distribution", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cause_distance_figure(pairs: CausePairs) -> Figure:
    """ECPE: emotion turn minus cause turn of gold pairs, found against missed."""
    fig, ax = plt.subplots(figsize=(6, 3))
    distances = pairs.hit_distances + pairs.missed_distances
    low, high = min(distances, default=0), max(distances, default=1)
    bins = [d - 0.5 for d in range(low, high + 2)]
    ax.hist([pairs.hit_distances, pairs.missed_distances], bins=bins, label=["found", "missed"],
            color=["#74c476", "#fb6a4a"])
    ax.set_xlabel("emotion turn − cause turn (0 = the utterance causes its own emotion)")
    ax.set_ylabel("gold pairs")
    ax.legend(fontsize=8)
    ax.set_title("gold cause pairs by distance", fontsize=10)
    fig.tight_layout()
    return fig


def grouped_bars(groups: Sequence[str], series: dict[str, list[float | None]], title: str, ylabel: str) -> Figure:
    """Bars per group, one colour per series; missing values leave a gap."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) * max(1, len(series)) / 2), 3.4))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width=width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig

