"""`Curriculum`: the one object that knows the M2SE plan (stages, seed, budgets) and every epoch's draws."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from emoverse.curriculum._plan import (
    BATCH_ORDER,
    StagePlan,
    cycle_slice,
    label_matrix,
    plan_stages,
    record_sources,
    rng,
    shuffle_order,
)
from emoverse.curriculum.batching import TokenBudget, plan_batches, split_for_ranks
from emoverse.curriculum.m2se import m2se_stages
from emoverse.curriculum.stage import Stage


class Curriculum:
    """A multi-stage, multi-task curriculum: which stage an epoch is in and which (record, task) pairs it draws.

    Created once and injected where it is needed: `AMTDataModule(curriculum=...)` binds it to the
    training records (`bind`) and builds the train loader from it, `EmoVerseModule(curriculum=...)`
    sizes its LR schedule and per-stage lr from it, `MultiStageCurriculum(curriculum)` sets each
    stage's trainable parts, and the run report reads the planned mix from it. `emoverse fit` links
    the YAML's top-level `curriculum:` to all of them and derives `Trainer(max_epochs)` from it.

    Draws: a stage with an int budget draws that many records (seeded) among the records no earlier
    stage used that carry a label of one of its tasks; "remaining" takes every record no earlier stage
    used; "all" takes every record. One epoch of a stage is `stage.samples_per_epoch` draws (default:
    the pool records labelled for one of its tasks), with an exact quota per task (largest-remainder
    rounding of the ratios); a task's records are walked in seeded permutations that continue across
    epochs, and the epoch's list is shuffled. Rank r of R takes positions r, r + R, ... of the list,
    padded by wrapping around so every rank draws as many. Everything derives from (seed, stage,
    epoch): no global RNG, so any epoch's draws are computed without replaying earlier ones.

    Bound with a `TokenBudget` (`AMTDataModule(max_tokens=...)`), an epoch is also cut into batches
    under the budget (`batches`): the whole epoch's draws (unpadded) are grouped by length within
    windows (packed rows: in the epoch's order, with a bounded look-ahead that keeps each row's task
    mix; `TokenBudget.lookahead`), the batches shuffled (seeded) and dealt round-robin to the ranks; so every draw of the
    epoch is in exactly one batch on one rank, and every rank takes as many batches (the batch
    with the most rows is halved until the count divides; `batch_stats`).

    Args:
        stages: the stages in order; default the paper's M2SE (`m2se_stages()`).
        seed: seed of every choice (pools, task walks, shuffles).
    """

    def __init__(self, stages: list[Stage] | None = None, seed: int = 0) -> None:
        self.stages = list(stages) if stages is not None else m2se_stages()
        if not self.stages:
            raise ValueError("Curriculum: stages=[]; expected at least one Stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Curriculum: stage names {names} must be distinct")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Curriculum: seed={seed!r}; expected an int")
        self.seed = seed
        self.tasks: tuple[str, ...] = tuple(sorted({t for s in self.stages for t in s.ratios}))
        self._starts = np.cumsum([0] + [s.epochs for s in self.stages]).tolist()  # first global epoch per stage
        self._plans: list[StagePlan] | None = None
        self.num_replicas, self.batch_size = 1, 1
        self.budget: TokenBudget | None = None
        self._length_of: Callable[[int, str], int] | None = None
        self._lengths: dict[tuple[int, int], int] = {}
        self._batches: dict[tuple[int, int], tuple[list[list[tuple[int, str]]], dict[str, int]]] = {}
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._warned_oversized = False

    def __repr__(self) -> str:
        return f"Curriculum(stages={[s.name for s in self.stages]}, seed={self.seed})"

    # epochs and stages ------------------------------------------------------------------------

    @property
    def total_epochs(self) -> int:
        """Sum of the stages' epochs: what `Trainer(max_epochs=...)` is."""
        return self._starts[-1]

    def stage_of(self, epoch: int) -> int:
        """The stage index of a global epoch (epochs past the end stay in the last stage)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: expected an int >= 0")
        return min(bisect.bisect_right(self._starts, epoch) - 1, len(self.stages) - 1)

    def stage_epoch(self, epoch: int) -> int:
        """A global epoch counted from the start of its stage."""
        return epoch - self._starts[self.stage_of(epoch)]

    @property
    def parts(self) -> list[str]:
        """Every part some stage trains, in first-use order (the optimizer's param groups)."""
        return list(dict.fromkeys(p for s in self.stages for p in s.train))

    # binding to the records -------------------------------------------------------------------

    def bind(self, record_tasks: Sequence[Collection[str]], num_replicas: int = 1, batch_size: int = 1,
             budget: TokenBudget | None = None, lengths: Callable[[int, str], int] | None = None) -> None:
        """Plan every stage over these training records for `num_replicas` ranks (the datamodule calls this).

        Args:
            record_tasks: per record, the task names it has labels for (and its `source:<name>` tag).
            num_replicas: the number of ranks that share each epoch.
            batch_size: draws per training batch on a rank (sizes the epochs in optimizer steps); not
                used with a `budget`.
            budget: form batches under a token budget instead of `batch_size` rows (`batches`).
            lengths: with a budget, the tokens of the example of (record index, task name), exactly as
                the collator will encode it (`AMTDataset.example_length`); called once per pair.
        """
        if num_replicas < 1 or batch_size < 1:
            raise ValueError(f"Curriculum.bind: num_replicas={num_replicas}, batch_size={batch_size}; expected >= 1")
        if budget is not None and lengths is None:
            raise ValueError("Curriculum.bind: a token budget needs `lengths` (tokens of a (record, task) pair)")
        self.batch_size = batch_size
        has = label_matrix(record_tasks, self.tasks)
        self._plans = plan_stages(has, self.tasks, self.stages, self.seed, record_sources(record_tasks))
        self.num_replicas = num_replicas
        self.budget, self._length_of = budget, lengths
        self._lengths.clear()
        self._batches.clear()
        self._cache.clear()

    @property
    def plans(self) -> list[StagePlan]:
        if self._plans is None:
            raise RuntimeError("Curriculum: not bound to training records yet; pass the same Curriculum to "
                               "AMTDataModule(curriculum=...), whose setup('fit') binds it")
        return self._plans

    def epoch_length(self, epoch: int) -> int:
        """Draws of one rank in global epoch `epoch`."""
        return -(-self.plans[self.stage_of(epoch)].length // self.num_replicas)

    def draws(self, epoch: int, rank: int = 0) -> list[tuple[int, str]]:
        """The (record index, task) pairs rank `rank` draws in global epoch `epoch`, in order."""
        if not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank={rank}: expected 0 <= rank < {self.num_replicas}")
        rec, tid = self._epoch_pairs(self.stage_of(epoch), self.stage_epoch(epoch))
        names = np.array(self.tasks, dtype=object)
        return list(zip(rec[rank::self.num_replicas].tolist(), names[tid[rank::self.num_replicas]].tolist()))

    # token-budget batches ---------------------------------------------------------------------

    def token_batches(self, epoch: int) -> bool:
        """Whether epoch `epoch` is cut into token-budget batches: bound with a budget and a stage whose objective
        uses one (`Objective.uses_token_budget`: SFT does; objectives that sample answers batch `batch_size`
        prompts)."""
        return self.budget is not None and self.stages[self.stage_of(epoch)].objective.uses_token_budget

    def batches(self, epoch: int, rank: int = 0) -> list[list[tuple[int, str]]]:
        """With a token budget: the batches of (record index, task) pairs rank `rank` takes in global epoch `epoch`."""
        if not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank={rank}: expected 0 <= rank < {self.num_replicas}")
        return self._epoch_batches(epoch)[0][rank::self.num_replicas]

    def epoch_batches(self, epoch: int) -> int:
        """Training batches of one rank in global epoch `epoch` (the same on every rank)."""
        if not self.token_batches(epoch):
            return -(-self.epoch_length(epoch) // self.batch_size)
        return len(self._epoch_batches(epoch)[0]) // self.num_replicas

    def batch_stats(self, epoch: int) -> dict[str, int]:
        """With a token budget, what the epoch's batching did (over all ranks): `batches`, `draws`, `tokens`
        (real tokens), `positions` (tokens + padding), `oversized` (draws longer than `max_tokens`, each in a
        batch of its own), `longest`, `split` (batches halved so the ranks take as many) and `repeated`
        (batches repeated to fill the last step, only when none could be split)."""
        return dict(self._epoch_batches(epoch)[1])

    def pair_lengths(self, records: Sequence[int], tasks: Sequence[str]) -> np.ndarray:
        """Tokens of each (record index, task) pair (cached; bound `lengths`)."""
        if self._length_of is None:
            raise RuntimeError("Curriculum: not bound with `lengths` (a token budget)")
        out = np.empty(len(records), dtype=np.int64)
        for k, (r, t) in enumerate(zip(records, tasks)):
            key = (int(r), self.tasks.index(t))
            n = self._lengths.get(key)
            if n is None:
                n = self._lengths[key] = int(self._length_of(int(r), t))
            out[k] = n
        return out

    def _epoch_batches(self, epoch: int) -> tuple[list[list[tuple[int, str]]], dict[str, int]]:
        if not self.token_batches(epoch):
            raise RuntimeError(f"Curriculum: epoch {epoch} has no token-budget batches (no budget bound, or its "
                               "stage's objective uses none); its batches follow `batch_size`")
        stage, stage_epoch = self.stage_of(epoch), self.stage_epoch(epoch)
        key = (stage, stage_epoch)
        if key not in self._batches:
            length = self.plans[stage].length
            rec, tid = self._epoch_pairs(stage, stage_epoch)
            rec, tid = rec[:length], tid[:length]  # the unpadded epoch: batches, not draws, are padded for the ranks
            names = [self.tasks[t] for t in tid.tolist()]
            lengths = self.pair_lengths(rec.tolist(), names)
            planned = plan_batches(lengths, self.budget, rng(self.seed, BATCH_ORDER, stage, stage_epoch), tasks=tid)
            dealt, repeated = split_for_ranks(planned, self.num_replicas)
            rec_l = rec.tolist()
            batches = [[(rec_l[i], names[i]) for i in b.tolist()] for b in dealt]
            over = lengths > self.budget.max_tokens
            positions = sum(self.budget.cost(lengths[b]) for b in dealt)
            stats = {"batches": len(dealt), "draws": int(sum(len(b) for b in dealt)),
                     "tokens": int(sum(int(lengths[b].sum()) for b in dealt)), "positions": int(positions),
                     "oversized": int(over.sum()), "longest": int(lengths.max(initial=0)),
                     "split": len(dealt) - repeated - len(planned), "repeated": repeated}
            if stats["oversized"] and not self._warned_oversized:
                # once per run, not once per epoch and rank: the count is in `batch_stats(epoch)["oversized"]`
                self._warned_oversized = True
                rank_zero_warn(f"Curriculum: stage {self.stages[stage].name!r} epoch {stage_epoch}: {stats['oversized']} "
                               f"of {length} draws are longer than max_tokens={self.budget.max_tokens} (longest "
                               f"{stats['longest']} tokens); each trains in a batch of its own (said once; later "
                               "epochs' counts are in Curriculum.batch_stats)", stacklevel=3)
            self._batches[key] = batches, stats
        return self._batches[key]

    def _epoch_pairs(self, stage: int, stage_epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """One stage epoch's shuffled (records, task ids) over all ranks, padded to ranks x epoch length."""
        key = (stage, stage_epoch)
        if key not in self._cache:
            plan = self.plans[stage]
            records, tasks = [], []
            for task, eligible, quota in zip(plan.tasks, plan.eligible, plan.quotas.tolist()):
                records.append(cycle_slice(eligible, stage_epoch * quota, quota, self.seed, stage, task))
                tasks.append(np.full(quota, self.tasks.index(task), dtype=np.int16))
            rec, tid = np.concatenate(records), np.concatenate(tasks)
            order = shuffle_order(len(rec), self.seed, stage, stage_epoch)
            total = -(-plan.length // self.num_replicas) * self.num_replicas
            order = order[np.arange(total) % max(len(order), 1)]  # pad by wrapping around
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = rec[order], tid[order]
        return self._cache[key]

    # what the others read ---------------------------------------------------------------------

    def optimizer_steps(self, accumulate_grad_batches: int = 1) -> list[int]:
        """Optimizer steps of each global epoch on one rank (Lightning steps on an epoch's last batch too)."""
        return [-(-self.epoch_batches(epoch) // accumulate_grad_batches) for epoch in range(self.total_epochs)]

    def loader_lengths(self) -> list[int]:
        """Length of each global epoch's train loader on one rank: draws, or batches with a token budget."""
        return [self.epoch_batches(e) if self.token_batches(e) else self.epoch_length(e) for e in range(self.total_epochs)]

    def quotas(self, stage: int) -> dict[str, int]:
        """Draws per task in one epoch of `stage`, over all ranks."""
        plan = self.plans[stage]
        return dict(zip(plan.tasks, plan.quotas.tolist()))

    def pool(self, stage: int) -> np.ndarray:
        """Record indices of a stage's pool."""
        return self.plans[stage].pool

    def planned(self) -> list[dict[str, Any]]:
        """The stages as plain data (the run report's planned mix)."""
        return [{"name": s.name, "ratios": s.ratios, "epochs": s.epochs, "budget": s.budget} for s in self.stages]
