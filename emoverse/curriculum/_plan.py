"""Vectorised building blocks of the sampler: seeded generators, stage pools, exact quotas, task cycles."""

from __future__ import annotations

import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from emoverse.curriculum.stage import Stage

_POOL, _CYCLE, _SHUFFLE, BATCH_ORDER = 1, 2, 3, 4  # stream tags, so pool/cycle/shuffle/batch randomness never overlap


def rng(seed: int, *key: int) -> np.random.Generator:
    """A generator determined by `seed` and `key` alone (no global RNG)."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, *key]))


def task_key(task: str) -> int:
    """A stable integer for a task name (independent of which other tasks exist)."""
    return zlib.crc32(task.encode())


def largest_remainder(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split `total` into integer parts proportional to `weights` (Hamilton / largest-remainder rounding)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    parts = np.floor(exact).astype(np.int64)
    short = total - int(parts.sum())
    if short:
        # ties go to the earlier task, so the split is deterministic
        order = np.argsort(-(exact - parts), kind="stable")
        parts[order[:short]] += 1
    return parts


def label_matrix(record_tasks: Sequence[Collection[str]], tasks: Sequence[str]) -> np.ndarray:
    """(records, tasks) bool matrix: whether record i has a label for tasks[j]. Other names are ignored."""
    col = {t: j for j, t in enumerate(tasks)}
    has = np.zeros((len(record_tasks), len(tasks)), dtype=bool)
    for i, names in enumerate(record_tasks):
        for name in names:
            j = col.get(name)
            if j is not None:
                has[i, j] = True
    return has


SOURCE_TAG = "source:"
"""Prefix of the pseudo-label naming a record's source among its task names (`AMTDataset.record_tasks`)."""


def record_sources(record_tasks: Sequence[Collection[str]]) -> np.ndarray | None:
    """Each record's source from its `source:<name>` tag ("" where untagged); None when no record has one."""
    found = [next((n[len(SOURCE_TAG):] for n in names if n.startswith(SOURCE_TAG)), "") for names in record_tasks]
    return np.array(found, dtype=object) if any(found) else None


@dataclass
class StagePlan:
    """What the sampler needs to generate any epoch of one stage."""

    pool: np.ndarray
    """Record indices of the stage's pool (sorted)."""
    tasks: list[str]
    """The stage's tasks, sorted."""
    eligible: list[np.ndarray]
    """Per task: the pool records carrying its label (sorted)."""
    quotas: np.ndarray
    """Draws per task in one epoch (sums to `length`)."""
    length: int
    """Draws in one epoch over all ranks."""
    usable: int
    """Pool records with a label of at least one of the stage's tasks."""


def plan_stages(has: np.ndarray, tasks: Sequence[str], stages: Sequence[Stage], seed: int,
                sources: np.ndarray | None = None) -> list[StagePlan]:
    """Choose every stage's pool (disjoint unless a stage says "all") and its per-epoch task quotas.

    `sources` (each record's source, see `record_sources`) restricts the pools of stages with `sources`.
    """
    col = {t: j for j, t in enumerate(tasks)}
    n = has.shape[0]
    used = np.zeros(n, dtype=bool)
    plans = []
    for index, stage in enumerate(stages):
        names = stage.tasks
        cols = [col[t] for t in names]
        allowed = np.ones(n, dtype=bool)
        if stage.sources is not None:
            if sources is None:
                raise ValueError(f"stage {index} {stage.name!r}: sources={stage.sources} but the records carry no "
                                 f"source (expected a '{SOURCE_TAG}<name>' entry per record)")
            allowed = np.isin(sources, stage.sources)
        labelled = has[:, cols].any(axis=1) & allowed
        if stage.budget == "all":
            pool = np.flatnonzero(allowed)
        elif stage.budget == "remaining":
            pool = np.flatnonzero(~used & allowed)
        else:
            candidates = np.flatnonzero(~used & labelled)
            if stage.budget > len(candidates):
                raise ValueError(
                    f"stage {index} {stage.name!r}: budget={stage.budget} but only {len(candidates)} records are "
                    f"unused by earlier stages and labelled for one of {names}"
                )
            pool = np.sort(rng(seed, _POOL, index).choice(candidates, size=stage.budget, replace=False))
        used[pool] = True
        eligible = []
        for task, j in zip(names, cols):
            records = pool[has[pool, j]]
            if len(records) == 0:
                raise ValueError(
                    f"stage {index} {stage.name!r}: task {task!r} has no labelled record in the stage's pool "
                    f"of {len(pool)} records (budget={stage.budget!r}); drop the task or change the budget"
                )
            eligible.append(records)
        usable = int(labelled[pool].sum())
        length = stage.samples_per_epoch or usable
        quotas = largest_remainder(length, [stage.ratios[t] for t in names])
        plans.append(StagePlan(pool, names, eligible, quotas, length, usable))
    return plans


def cycle_slice(records: np.ndarray, start: int, count: int, seed: int, stage: int, task: str) -> np.ndarray:
    """Positions [start, start + count) of an endless stream that walks `records` in seeded permutations.

    Cycle c of the stream is permutation c of `records`, so no record repeats before all were used,
    and any slice is computed without walking the stream from its beginning.
    """
    if count == 0:
        return records[:0]
    m = len(records)
    first, last = start // m, (start + count - 1) // m
    key = task_key(task)
    perms = [records[rng(seed, _CYCLE, stage, key, c).permutation(m)] for c in range(first, last + 1)]
    stream = perms[0] if len(perms) == 1 else np.concatenate(perms)
    offset = start - first * m
    return stream[offset : offset + count]


def shuffle_order(n: int, seed: int, stage: int, epoch: int) -> np.ndarray:
    """The seeded shuffle of one stage epoch's (record, task) list."""
    return rng(seed, _SHUFFLE, stage, epoch).permutation(n)
