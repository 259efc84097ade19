"""The curriculum of a run as the report shows it: planned task ratios, draws, and where each stage began."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emoverse.report.run import DRAWS_FILE, Run

STAGE_COLUMN = "curriculum/stage"
SEEN = ("curriculum/", "_seen")
"""`curriculum/{task}_seen`: draws of the current stage so far, logged by MultiStageCurriculum before the redesign (older runs)."""


@dataclass
class StageView:
    """One stage: what was planned and what was drawn.

    Attributes:
        name: the stage's name.
        ratios: planned task ratios (as configured, not normalised).
        epochs: planned epochs (None when unknown).
        first_step: the global step at which the stage began (None: not reached or unknown).
        drawn: samples drawn per task in this stage; empty when the stage was not reached.
        exact: whether `drawn` counts every sample (curriculum.json) or is the last logged value.
    """

    name: str
    ratios: dict[str, float]
    epochs: int | None = None
    first_step: float | None = None
    drawn: dict[str, int] = field(default_factory=dict)
    exact: bool = False


def planned_stages(run: Run) -> list[dict[str, Any]]:
    """`[{name, ratios, epochs}]`: from curriculum.json, else the config's `curriculum:`, else []."""
    if run.draws and isinstance(run.draws.get("stages"), list):
        return [s for s in run.draws["stages"] if isinstance(s, dict) and isinstance(s.get("ratios"), dict)]
    curriculum = run.config.get("curriculum")
    if isinstance(curriculum, dict):
        stages = (curriculum.get("init_args") or curriculum).get("stages")
        if stages is None:  # the Curriculum's default
            from emoverse.curriculum import m2se_stages

            return [{"name": s.name, "ratios": s.ratios, "epochs": s.epochs} for s in m2se_stages()]
        return [s for s in stages if isinstance(s, dict) and isinstance(s.get("ratios"), dict)]
    return []


def stage_views(run: Run) -> tuple[list[StageView], list[str]]:
    """The run's stages with their draws and start steps, and notes on what could not be told."""
    notes: list[str] = []
    planned = planned_stages(run)
    views = [StageView(name=str(s.get("name", f"stage {i + 1}")), ratios={str(k): float(v) for k, v in s["ratios"].items()},
                       epochs=s.get("epochs") if isinstance(s.get("epochs"), int) else None)
             for i, s in enumerate(planned)]
    epochs = run.draws.get("epochs") if run.draws else None
    if isinstance(epochs, list) and epochs:
        for entry in epochs:
            index = entry.get("stage") if isinstance(entry, dict) else None
            if not isinstance(index, int) or index < 0:
                continue
            while len(views) <= index:
                views.append(StageView(name=f"stage {len(views) + 1}", ratios={}))
            view = views[index]
            view.exact = True
            for task, n in (entry.get("drawn") or {}).items():
                view.drawn[task] = view.drawn.get(task, 0) + int(n)
            step = entry.get("first_step")
            if isinstance(step, (int, float)) and (view.first_step is None or step < view.first_step):
                view.first_step = float(step)
        return views, notes
    if not run.columns(STAGE_COLUMN):
        if views:
            notes.append(f"no {DRAWS_FILE} and no {STAGE_COLUMN} column in metrics.csv: draws per stage unknown")
        return views, notes
    notes.append(f"no {DRAWS_FILE} (written by emoverse.report.RunReport): draws per stage are the last "
                 "logged curriculum/*_seen values, which may miss the steps after the last log")
    seen = [c for c in run.columns(SEEN[0]) if c.endswith(SEEN[1])]
    for row in run.metrics:
        if STAGE_COLUMN not in row:
            continue
        index = int(row[STAGE_COLUMN])
        while len(views) <= index:
            views.append(StageView(name=f"stage {len(views) + 1}", ratios={}))
        view = views[index]
        if "step" in row and (view.first_step is None or row["step"] < view.first_step):
            view.first_step = row["step"]
        for column in seen:
            if column in row:
                view.drawn[column[len(SEEN[0]):-len(SEEN[1])]] = int(row[column])
    return views, notes
