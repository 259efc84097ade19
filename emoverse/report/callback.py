"""`RunReport`: records the tasks each curriculum stage drew and writes the run's report.html after fit and test."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from emoverse.curriculum.curriculum import Curriculum
from emoverse.curriculum.stage import known_task_names
from emoverse.report.page import write_report
from emoverse.report.run import DRAWS_FILE


class RunReport(Callback):
    """Writes `{log_dir}/report.html` at the end of `fit` and `test`, and `{log_dir}/curriculum.json` during fit.

    curriculum.json holds the planned stages (the module's `curriculum`, if it has one)
    and, per epoch, the stage, the global step it began at and the samples of each task the
    training steps received (counted from the batches' `tasks`, summed over ranks). It is
    rewritten at every epoch's end, so a stopped run keeps what it drew; the counts are part of
    the callback's checkpoint state, so a resumed run continues them.

    A report that fails to render is a warning, never a failed run. Only rank 0 writes, but every
    rank resolves the run folder in `setup`: `Trainer.log_dir` is a collective (a broadcast from
    rank 0), so reading it inside a rank-0-only branch would leave rank 0 waiting for the others.

    Args:
        out_dir: where the page goes; None = the trainer's `log_dir` (the run folder).
        on_fit: write the report when `fit` ends.
        on_test: write the report when `test` ends.
    """

    def __init__(self, out_dir: str | None = None, on_fit: bool = True, on_test: bool = True) -> None:
        self.out_dir = out_dir
        self.on_fit = on_fit
        self.on_test = on_test
        self._epochs: list[dict[str, Any]] = []  # finished epochs: {epoch, stage, first_step, drawn}
        self._current: Counter[str] = Counter()  # this rank's draws in the running epoch
        self._first_step: int | None = None
        self._dir: Path | None = None  # where the files go, resolved on every rank in setup
        self._run_dir: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # a broadcast: all ranks call it here, together
        self._run_dir = Path(log_dir) if log_dir else None
        self._dir = Path(self.out_dir or log_dir or trainer.default_root_dir)

    # counting -----------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._first_step = trainer.global_step if self._first_step is None else self._first_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._first_step is None:  # resumed mid-epoch: on_train_epoch_start was skipped
            self._first_step = trainer.global_step
        self._current.update(task for _, task in batch.draws)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        names = sorted(set(known_task_names()) | set(self._current))
        local = torch.tensor([self._current[n] for n in names], dtype=torch.float64, device=pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local
        curriculum = _curriculum(pl_module)
        self._epochs = [e for e in self._epochs if e["epoch"] != trainer.current_epoch]
        self._epochs.append({
            "epoch": trainer.current_epoch,
            "stage": curriculum.stage_of(trainer.current_epoch) if curriculum else 0,
            "first_step": self._first_step if self._first_step is not None else trainer.global_step,
            "drawn": {n: int(v) for n, v in zip(names, total.tolist()) if v},
        })
        self._current.clear()
        self._first_step = None
        if trainer.is_global_zero:
            self._write_draws(curriculum)

    def _write_draws(self, curriculum: Curriculum | None) -> None:
        stages = curriculum.planned() if curriculum else []
        path = self._out() / DRAWS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stages": stages, "epochs": self._epochs}, indent=1) + "\n", encoding="utf-8")

    # reports ------------------------------------------------------------------------------------

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on_fit:
            self._report(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on_test:
            self._report(trainer)

    def _report(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero:
            return
        out = self._out()
        try:
            path = write_report(self._run_dir or out, out)
        except Exception as err:  # the run's results matter more than its page
            rank_zero_warn(f"RunReport: no report for {out}: {type(err).__name__}: {err}")
            return
        rank_zero_info(f"RunReport: wrote {path}")

    def _out(self) -> Path:
        assert self._dir is not None, "RunReport used before setup"
        return self._dir

    # checkpointing ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self._epochs, "current": dict(self._current), "first_step": self._first_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epochs = list(state_dict.get("epochs", []))
        self._current = Counter(state_dict.get("current", {}))
        self._first_step = state_dict.get("first_step")


def _curriculum(pl_module: LightningModule) -> Curriculum | None:
    """The run's planned stages: the module's `curriculum` (`EmoVerseModule(curriculum=...)`), if any."""
    curriculum = getattr(pl_module, "curriculum", None)
    return curriculum if isinstance(curriculum, Curriculum) else None
