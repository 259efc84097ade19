"""Two CPU processes (DDP over gloo): disjoint training shares, one evaluation, no hang."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest

from emoverse import AMTDataModule, EmoVerseModule, MultiStageCurriculum, Stage, make_demo_amt
from emoverse.checkpointing import ResumableCheckpoint
from emoverse.curriculum import Curriculum
from emoverse.report import RunReport


class _RecordPairs(pl.Callback):
    """Write each rank's (record, task) pairs and validation sizes to a JSON file."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pairs: list[list] = []
        self.batches = 0
        self.val_ids: list[str] = []
        dm = trainer.datamodule
        single = Curriculum(pl_module.curriculum.stages, seed=pl_module.curriculum.seed)
        single.bind(dm.datasets["train"].record_tasks, num_replicas=1)
        ids = dm.datasets["train"].index.entries
        self.expected = [[epoch, ids[i].meta["id"], t] for epoch in range(trainer.max_epochs)
                         for i, t in single.draws(epoch)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.pairs += [[trainer.current_epoch, i, t] for i, t in zip(batch.ids, batch.tasks, strict=True)]
        self.batches += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.val_ids += [f"{i}/{t}" for i, t in zip(batch.ids, batch.tasks, strict=True)]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"pairs": self.pairs, "batches": self.batches, "steps": trainer.global_step,
                  "planned_steps": sum(pl_module.curriculum.optimizer_steps()), "val": self.val_ids, "expected": self.expected,
                  "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.parametrize("batching", [{}, {"max_tokens": 900}, {"max_tokens": 900, "packing": True}],
                         ids=["batch-size", "token-budget", "packing"])
def test_two_ranks_train_on_disjoint_samples_and_share_evaluation(tmp_path: Path, batching: dict) -> None:
    make_demo_amt(tmp_path / "amt", seed=0, num_monologues=80, num_dialogues=16)
    curriculum = Curriculum([Stage(name="one", ratios={"msa": 2, "mer": 1}, budget=60, epochs=1),
                             Stage(name="two", ratios={"mer": 1, "ecpe": 1}, budget="remaining", epochs=1)])
    trainer = pl.Trainer(  # with the shipped callbacks, as the shipped configs run
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, reload_dataloaders_every_n_epochs=1,
        logger=False, enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        callbacks=[MultiStageCurriculum(curriculum), _RecordPairs(tmp_path), RunReport(out_dir=str(tmp_path)),
                   ResumableCheckpoint(str(tmp_path / "checkpoints"), every_n_train_steps=5)],
    )
    module = EmoVerseModule("tiny", tasks=["msa", "mer", "ecpe"], lr=1e-3, curriculum=curriculum)
    trainer.fit(module, AMTDataModule(str(tmp_path / "amt"), batch_size=4, eval_batch_size=8, max_eval_per_task=6,
                                      processor=module.processor, tasks=module.tasks, curriculum=curriculum,
                                      **batching))
    assert (tmp_path / "report.html").exists() and (tmp_path / "checkpoints" / "last.ckpt").exists()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # together the ranks draw exactly the single-process sequence of every epoch, each half of it
    both = Counter(tuple(p) for r in ranks for p in r["pairs"])
    assert both == Counter(tuple(p) for p in ranks[0]["expected"])
    assert ranks[0]["batches"] == ranks[1]["batches"] == ranks[0]["steps"] == ranks[0]["planned_steps"] > 0
    if not batching:
        assert len(ranks[0]["pairs"]) == len(ranks[1]["pairs"])
    val = [set(r["val"]) for r in ranks]
    assert not val[0] & val[1] and len(val[0] | val[1]) == 3 * 6  # 3 tasks x 6 pairs, split across ranks
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "val/mer/acc" in ranks[0]["metrics"]
