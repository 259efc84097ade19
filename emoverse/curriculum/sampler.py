"""`TaskWeightedSampler`: yields `(record_index, task_name)` pairs by per-stage task ratios; DDP-aware, resumable."""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from emoverse.curriculum._plan import (
    StagePlan,
    cycle_slice,
    label_matrix,
    plan_stages,
    record_sources,
    shuffle_order,
)
from emoverse.curriculum.stage import Stage


class TaskWeightedSampler(DistributedSampler[tuple[int, str]]):
    """Draws (record, task) pairs for a multi-stage curriculum.

    Pools: a stage with an int budget draws that many records (seeded) among the records no earlier
    stage used that carry a label of one of its tasks; "remaining" takes every record no earlier stage
    used; "all" takes every record.

    Epochs: one epoch of a stage is `stage.samples_per_epoch` draws, by default the number of pool
    records with a label of one of its tasks. Each task gets an exact quota (largest-remainder
    rounding of the ratios); a task's records are walked in seeded permutations (no record repeats
    for a task before all its records were used, and the walk continues across epochs), and the
    epoch's list is shuffled. Everything derives from (seed, stage, epoch): no global RNG.

    Ranks: rank r takes positions r, r + R, ... of the epoch's list, padded by wrapping around
    (or trimmed if `drop_last`) so all ranks get `len(self)` samples. It is a `DistributedSampler`
    (without its dataset-index logic) so that frameworks that add one, Lightning under
    `Trainer(use_distributed_sampler=True)` among them, see that it splits by rank already and do
    not wrap it into a second split (which would leave each rank 1/R² of the epoch).

    Position: `set_epoch(epoch)` takes the trainer's *global* epoch (Lightning calls it on every
    epoch start) and picks the stage from the stages' `epochs`. `consumed` is how many of this rank's
    samples of the current epoch were already trained on; iteration starts there, and it goes back
    to 0 when the epoch changes. The sampler cannot count consumption itself, because a DataLoader
    prefetches ahead of training: whoever saves a checkpoint sets `consumed` from the trainer's
    batch count (`MultiStageCurriculum` does) before calling `state_dict()`.

    Args:
        record_tasks: for each record, the names of the tasks it has labels for.
        stages: the curriculum's stages, in order.
        seed: seed of every random choice.
        num_replicas: number of ranks; None = the torch.distributed world size (1 if not initialised).
        rank: this rank; None = the torch.distributed rank (0 if not initialised).
        drop_last: trim the epoch to a multiple of the ranks instead of padding it.
    """

    def __init__(
        self,
        record_tasks: Sequence[Collection[str]],
        stages: Sequence[Stage],
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        # DistributedSampler.__init__ is not called: it indexes a dataset, this draws from a plan
        if not stages:
            raise ValueError("stages: expected at least one Stage, got none")
        self.shuffle = True  # the epoch's list is shuffled (read by code that inspects DistributedSamplers)
        self.stages = list(stages)
        self.seed = int(seed)
        self.num_replicas, self.rank = _resolve_ranks(num_replicas, rank)
        self.drop_last = drop_last
        self.tasks: tuple[str, ...] = tuple(sorted({t for s in self.stages for t in s.ratios}))
        self.num_records = len(record_tasks)
        has = label_matrix(record_tasks, self.tasks)
        self.plans: list[StagePlan] = plan_stages(has, self.tasks, self.stages, self.seed, record_sources(record_tasks))
        self._task_names = np.array(self.tasks, dtype=object)
        self._starts = np.cumsum([0] + [s.epochs for s in self.stages]).tolist()  # first global epoch per stage
        self._stage, self._epoch = 0, 0
        self.consumed = 0
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    # position ---------------------------------------------------------------------------------

    @property
    def stage(self) -> int:
        """Index of the current stage."""
        return self._stage

    @property
    def epoch(self) -> int:
        """The current global epoch."""
        return self._epoch

    @property
    def stage_epoch(self) -> int:
        """The current epoch counted from the start of the current stage."""
        return self._epoch - self._starts[self._stage]

    @property
    def total_epochs(self) -> int:
        """Sum of the stages' epochs (what `Trainer(max_epochs=...)` should be)."""
        return self._starts[-1]

    def stage_of(self, epoch: int) -> int:
        """The stage a global epoch belongs to (epochs past the end stay in the last stage)."""
        return min(bisect.bisect_right(self._starts, epoch) - 1, len(self.stages) - 1)

    def set_epoch(self, epoch: int) -> None:
        """Move to global epoch `epoch` (its stage follows); `consumed` resets when the epoch changes."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: expected an int >= 0")
        if epoch != self._epoch:
            self.consumed = 0
        self._epoch, self._stage = epoch, self.stage_of(epoch)

    def set_stage(self, index: int, epoch: int = 0) -> None:
        """Move to epoch `epoch` (counted within the stage) of stage `index`."""
        if not 0 <= index < len(self.stages):
            raise ValueError(f"stage index={index}: expected 0 <= index < {len(self.stages)}")
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: expected an int >= 0")
        self.set_epoch(self._starts[index] + epoch)
        self._stage = index  # past-the-end epochs of an earlier stage stay in that stage

    # the epoch's list -------------------------------------------------------------------------

    def _global_pairs(self, stage: int, stage_epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's shuffled (records, task ids) over all ranks, padded or trimmed to ranks x len."""
        key = (stage, stage_epoch)
        if key in self._cache:
            return self._cache[key]
        plan = self.plans[stage]
        records, tasks = [], []
        for task, eligible, quota in zip(plan.tasks, plan.eligible, plan.quotas.tolist()):
            records.append(cycle_slice(eligible, stage_epoch * quota, quota, self.seed, stage, task))
            tasks.append(np.full(quota, self.tasks.index(task), dtype=np.int16))
        rec, tid = np.concatenate(records), np.concatenate(tasks)
        order = shuffle_order(len(rec), self.seed, stage, stage_epoch)
        total = self.stage_length(stage) * self.num_replicas
        if total != len(order):  # pad by wrapping around, or trim (drop_last)
            order = order[np.arange(total) % max(len(order), 1)]
        pairs = rec[order], tid[order]
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = pairs
        return pairs

    def stage_length(self, stage: int) -> int:
        """Samples per epoch on this rank in stage `stage`."""
        length, r = self.plans[stage].length, self.num_replicas
        return length // r if self.drop_last else -(-length // r)

    def __len__(self) -> int:
        """Samples per epoch on this rank, in the current stage (the full epoch, even when resuming)."""
        return self.stage_length(self._stage)

    @property
    def num_samples(self) -> int:  # DistributedSampler's name for the per-rank length
        return len(self)

    @property
    def total_size(self) -> int:  # DistributedSampler's name for the padded length over all ranks
        return len(self) * self.num_replicas

    def total_steps(self, batch_size: int, accumulate_grad_batches: int = 1, drop_last: bool = False) -> int:
        """Optimizer steps per rank over all stages' epochs, for LR schedules.

        Lightning's `trainer.estimated_stepping_batches` assumes every epoch is as long as the first;
        stages of different sizes make that wrong, so size warm-up/decay schedules with this instead.
        """
        total = 0
        for index, stage in enumerate(self.stages):
            n = self.stage_length(index)
            batches = n // batch_size if drop_last else -(-n // batch_size)
            total += stage.epochs * -(-batches // accumulate_grad_batches)
        return total

    def __iter__(self) -> Iterator[tuple[int, str]]:
        if not 0 <= self.consumed <= len(self):
            raise ValueError(f"consumed={self.consumed}: expected 0 <= consumed <= len(sampler)={len(self)}")
        rec, tid = self._global_pairs(self._stage, self.stage_epoch)
        start = self.rank + self.consumed * self.num_replicas
        mine = slice(start, None, self.num_replicas)
        return zip(rec[mine].tolist(), self._task_names[tid[mine]].tolist())

    # what was drawn -------------------------------------------------------------------------

    def quotas(self, stage: int | None = None) -> dict[str, int]:
        """Draws per task in one epoch of `stage` (default: the current one), over all ranks."""
        plan = self.plans[self._stage if stage is None else stage]
        return dict(zip(plan.tasks, plan.quotas.tolist()))

    def pool(self, stage: int) -> np.ndarray:
        """Record indices of a stage's pool."""
        return self.plans[stage].pool

    def seen(self, consumed: int | None = None) -> dict[str, int]:
        """Per-task draws of the current stage so far, over all ranks.

        Counts the stage's earlier epochs in full plus the first `consumed` samples per rank of the
        current epoch (default: `self.consumed`).
        """
        k = self.consumed if consumed is None else consumed
        counts = np.zeros(len(self.tasks), dtype=np.int64)
        for e in range(self.stage_epoch):
            counts += np.bincount(self._global_pairs(self._stage, e)[1], minlength=len(self.tasks))
        tid = self._global_pairs(self._stage, self.stage_epoch)[1]
        counts += np.bincount(tid[: k * self.num_replicas], minlength=len(self.tasks))
        return {t: int(counts[self.tasks.index(t)]) for t in self.plans[self._stage].tasks}

    # checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Position (stage, global epoch, samples consumed on this rank) and a fingerprint of the plan."""
        return {
            "stage": self._stage,
            "epoch": self._epoch,
            "consumed": int(self.consumed),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "lengths": [p.length for p in self.plans],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by `state_dict`; the seed, ranks and stage lengths must match."""
        mine = self.state_dict()
        for field in ("seed", "num_replicas", "lengths"):
            if state.get(field, mine[field]) != mine[field]:
                raise ValueError(
                    f"TaskWeightedSampler.load_state_dict: {field}={state[field]!r} in the checkpoint but "
                    f"{mine[field]!r} now; an exact resume needs the same seed, world size, records and stages"
                )
        self.set_stage(int(state["stage"]), int(state["epoch"]) - self._starts[int(state["stage"])])
        self.consumed = int(state["consumed"])
        if not 0 <= self.consumed <= len(self):
            raise ValueError(f"TaskWeightedSampler.load_state_dict: consumed={self.consumed}, expected 0..{len(self)}")


def _resolve_ranks(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    ready = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if ready else 1
    if rank is None:
        rank = dist.get_rank() if ready else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"num_replicas={num_replicas}, rank={rank}: expected num_replicas >= 1 and 0 <= rank < num_replicas")
    return num_replicas, rank
