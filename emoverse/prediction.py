"""`JSONLPredictionWriter`: `emoverse predict` writes its structured answers to a JSONL file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from emoverse.evaluation import jsonable, rank_path


class JSONLPredictionWriter(BasePredictionWriter):
    """Write `predict_step` rows `{id, task, prompt, generation, prediction}` as they come.

    Rows go to `{path}.partial`, renamed to `path` when the prediction epoch ends, so a run that
    stops early leaves no file that looks complete. Always on in the `emoverse` CLI.

    Args:
        path: output file; default `{log_dir}/predictions.jsonl` (one file per rank under DDP).
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.written: Path | None = None
        self._file: IO[str] | None = None
        self._partial: Path | None = None

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "predictions.jsonl"
        out = rank_path(out, trainer)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.written, self._partial = None, out.with_name(out.name + ".partial")
        self._target, self._rows = out, 0
        self._file = self._partial.open("w", encoding="utf-8")

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._rows += len(prediction)
        for row in prediction:
            self._file.write(json.dumps({k: jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n")

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            os.replace(self._partial, self._target)
            self.written = self._target
            # each rank writes (and names) its own file
            print(f"emoverse predict: wrote {self._rows} answers to {self._target}", file=sys.stderr)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._file is not None:  # keep what was written, under the .partial name
            self._file.close()
            self._file = None
