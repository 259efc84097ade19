"""`AMTDataModule`: AMT shards → task-weighted training batches and per-task evaluation batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from emoverse.backbones.base import BackboneProcessor
from emoverse.curriculum.batching import TokenBudget
from emoverse.curriculum.curriculum import Curriculum
from emoverse.curriculum.sampler import TaskWeightedSampler, TokenBudgetSampler
from emoverse.curriculum.stage import Stage
from emoverse.data.collator import AMTCollator
from emoverse.data.dataset import AMTDataset, BatchedPairs, check_drop
from emoverse.data.demo import make_demo_amt
from emoverse.data.shards import OnCorrupt, ShardIndex
from emoverse.data.streaming import AMTStream
from emoverse.distributed import RankShardSampler

if TYPE_CHECKING:
    from emoverse.tasks.base import Task


class AMTDataModule(pl.LightningDataModule):
    """Reads AMT shards; training draws the (record, task) pairs a `Curriculum` plans.

    The backbone's processor, the task objects and the curriculum are injected: `emoverse fit`
    links them from the model (`model.processor`, `model.tasks`) and the YAML's `curriculum:`; from
    Python pass them to the constructor, e.g. `AMTDataModule(path, processor=module.processor,
    tasks=module.tasks, curriculum=curriculum)`. Without a curriculum, training is one stage over
    every record with equal task ratios.

    The train loader is a torchdata `StatefulDataLoader` over a `TaskWeightedSampler`: its state
    (the draws it delivered, prefetching accounted for) is the position inside the epoch, and
    Lightning saves and restores it with the checkpoint, so a resume continues the epoch's exact
    sequence whatever the batch sizes. Each rank draws its own share (the curriculum splits the
    epoch) and evaluates its own slice of the pairs (`RankShardSampler`, unpadded).

    Args:
        path: AMT root (`{path}/{split}/*.tar`).
        demo: build the demo AMT at `path` when it does not exist yet (`make_demo_amt`).
        batch_size: training batch size per device (rows; not used when `max_tokens` is set).
        eval_batch_size: validation/test/predict batch size (generation is batched).
        num_workers: dataloader worker processes.
        num_frames: frames per video prompt.
        max_eval_per_task: cap on validation pairs per task (None = all); test always uses all.
        seed: seed of prompt variants (and of the default one-stage curriculum).
        system_prompt: optional system message in every prompt.
        streaming: stream training examples from the shards (`AMTStream`: one webdataset stream per
            task, shards split across ranks and workers) instead of indexed, resumable sampling;
            not combinable with a curriculum.
        stream_ratios: task ratios of the stream (default: equal over the module's tasks).
        processor: the backbone's processor (`EmoVerseModule.processor`).
        tasks: the task objects by name (`EmoVerseModule.tasks`).
        on_corrupt: a corrupt shard or record (unreadable tar, invalid JSON or fields, missing
            frames): "error" (default) stops with the file and record key named; "skip" leaves it
            out and warns with the count (docs/reliability.md).
        curriculum: the stages training walks through (`emoverse fit` links the YAML's `curriculum:`).
        max_tokens: form training batches under this many tokens per rank instead of `batch_size`
            rows: rows x longest row, or with `packing` the sum of the rows; lengths are the exact
            encoded rows (prompt, visual tokens, response; `AMTDataset.example_length`), draws
            are grouped by length within windows of `bucket_window` draws (`TokenBudget`). An
            example longer than `max_tokens` trains in a batch of its own (a warning counts them).
            None (default): `batch_size` rows per batch.
        packing: concatenate each batch's rows into one padding-free row with per-example position
            ids (no attention across examples); needs `max_tokens`. A backbone that cannot pack
            (`BackboneProcessor.packing_unsupported` says why) warns in one line and trains on padded
            `max_tokens` batches instead, so one config serves every backbone.
        bucket_window: draws per length-sorting window of `max_tokens` batching.
        pack_lookahead: with `packing`, how many draws past the first one that does not fit a row may take
            to fill it, choosing to keep the row's task shares near the stage's ratios
            (`TokenBudget.lookahead`); 0: rows of consecutive draws only, closed at the first misfit.
        drop_modalities: modalities taken out of every prompt of every split (`MODALITIES`): "frames",
            "audio", "text" (the transcript). For a modality ablation, `emoverse test` one checkpoint once
            per set; the run report shows their metrics side by side (docs/audio.md).
    """

    def __init__(
        self,
        path: str = "data/demo_amt",
        demo: bool = False,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        num_frames: int = 4,
        max_eval_per_task: int | None = None,
        seed: int = 0,
        system_prompt: str | None = None,
        streaming: bool = False,
        stream_ratios: dict[str, float] | None = None,
        processor: BackboneProcessor | None = None,
        tasks: Mapping[str, Task] | None = None,
        on_corrupt: OnCorrupt = "error",
        curriculum: Curriculum | None = None,
        max_tokens: int | None = None,
        packing: bool = False,
        bucket_window: int = 512,
        pack_lookahead: int = 64,
        drop_modalities: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["processor", "tasks", "curriculum"])
        if streaming and curriculum is not None:
            raise ValueError("AMTDataModule(streaming=True) cannot follow a curriculum: stage budgets and exact "
                             "resume need indexed access; set streaming: false or drop the curriculum")
        if max_tokens is not None or packing:
            if max_tokens is None:
                raise ValueError("AMTDataModule(packing=True) needs max_tokens (the tokens of one packed row)")
            if streaming:
                raise ValueError("AMTDataModule(max_tokens=...) cannot batch a stream: token-budget batches are planned "
                                 "per epoch over indexed draws; set streaming: false or drop max_tokens")
            self.budget: TokenBudget | None = TokenBudget(max_tokens, packing, bucket_window,  # validates the fields
                                                            pack_lookahead)
        else:
            self.budget = None
        self.path, self.demo = Path(path), demo
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.num_frames, self.max_eval_per_task, self.seed = num_frames, max_eval_per_task, seed
        self.system_prompt = system_prompt
        self.drop_modalities = sorted(check_drop(drop_modalities or [], "AMTDataModule"))
        self.streaming, self.stream_ratios, self.on_corrupt = streaming, stream_ratios, on_corrupt
        self.curriculum = curriculum
        self.processor = processor
        self.tasks: dict[str, Task] = dict(tasks or {})
        self.datasets: dict[str, AMTDataset] = {}

    def prepare_data(self) -> None:
        if self.demo and not (self.path / "manifest.json").exists():
            make_demo_amt(self.path, seed=self.seed)

    def setup(self, stage: str) -> None:
        if self.processor is None or not self.tasks:
            raise ValueError("AMTDataModule: no processor and tasks; pass processor=module.processor and "
                             "tasks=module.tasks (emoverse fit links them from the model)")
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}[stage]
        for split in splits:
            if split == "train" and self.streaming:
                continue
            if split not in self.datasets:
                self.datasets[split] = AMTDataset(ShardIndex(self.path, split, self.on_corrupt), self.tasks, self.processor,
                                                  self.num_frames, self.seed, self.system_prompt, self.drop_modalities)
        if stage == "fit" and not self.streaming:
            records = self.datasets["train"].record_tasks
            if self.curriculum is None:
                have = set().union(*records)
                self.curriculum = Curriculum([Stage(name="all-tasks", ratios={t: 1.0 for t in self.tasks if t in have},
                                                    budget="all")], seed=self.seed)
            if self.budget is not None and self.budget.packing:
                reason = self.processor.packing_unsupported()
                if reason:  # the config stays valid for every backbone: the same budget, rows padded instead
                    rank_zero_warn(f"AMTDataModule(packing=True): this backbone cannot pack ({reason}); its training "
                                   f"batches are token-budget batches of up to {self.budget.max_tokens} tokens, padded "
                                   "and length-sorted (docs/data.md)")
                    self.budget = dataclasses.replace(self.budget, packing=False)
            train = self.datasets["train"]
            self.curriculum.bind(records, self._ranks()[0], self.batch_size, budget=self.budget,
                                 lengths=train.example_length if self.budget is not None else None)

    def _ranks(self) -> tuple[int, int]:
        """(world size, this rank), from the trainer when there is one."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        if self.streaming:
            ratios = self.stream_ratios or {t: 1.0 for t in self.tasks}
            stream = AMTStream(self.path, "train", self.tasks, ratios, self.processor, self.num_frames, self.seed,
                               on_corrupt=self.on_corrupt, system_prompt=self.system_prompt,
                               drop_modalities=self.drop_modalities)
            return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                              collate_fn=AMTCollator(self.processor, "train", self.system_prompt))
        if self.curriculum is None or "train" not in self.datasets:
            raise RuntimeError("AMTDataModule.train_dataloader before setup('fit')")
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        # the stage's objective makes its batches (`Objective.collator`): supervised examples, or prompts to
        # sample answers for; and says whether they may follow the token budget (`Curriculum.token_batches`)
        objective = self.curriculum.stages[self.curriculum.stage_of(epoch)].objective
        if self.curriculum.token_batches(epoch):
            # one item per batch: the sampler yields lists of draws, the dataset lists of examples
            batches = TokenBudgetSampler(self.curriculum, rank=self._ranks()[1], epoch=epoch)
            return StatefulDataLoader(BatchedPairs(self.datasets["train"]), batch_size=None, sampler=batches,
                                      num_workers=self.num_workers,
                                      collate_fn=objective.collator(self.processor, self.system_prompt,
                                                                    pack=self.budget.packing))
        sampler = TaskWeightedSampler(self.curriculum, rank=self._ranks()[1], epoch=epoch)
        # rebuilt every epoch (stages differ in length), so worker processes are not kept
        return StatefulDataLoader(self.datasets["train"], batch_size=self.batch_size, sampler=sampler,
                                  num_workers=self.num_workers,
                                  collate_fn=objective.collator(self.processor, self.system_prompt))

    def _eval_loader(self, split: str, cap: int | None) -> DataLoader:
        ds = self.datasets[split]
        pairs = [p for t in self.tasks for p in ds.pairs([t])[:cap]]
        world, rank = self._ranks()
        return DataLoader(_Pairs(ds, pairs), batch_size=self.eval_batch_size,
                          sampler=RankShardSampler(len(pairs), world, rank),
                          num_workers=self.num_workers,
                          collate_fn=AMTCollator(self.processor, "generate", self.system_prompt))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", self.max_eval_per_task)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", None)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test", None)


class _Pairs:
    """A fixed list of (record, task) pairs over an `AMTDataset` (evaluation order)."""

    def __init__(self, dataset: AMTDataset, pairs: list[tuple[int, str]]) -> None:
        self.dataset, self.pairs = dataset, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.pairs[i]]
