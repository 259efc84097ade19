"""Token-budget batches: an epoch's draws grouped under a token budget, length-sorted within windows of draws."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenBudget:
    """How training batches are formed when their size is set in tokens rather than rows.

    Padded batches: the epoch's shuffled draws are cut into windows of `window` consecutive draws; each
    window is sorted by length and cut greedily into batches whose cost stays within `max_tokens`, so
    rows of a batch have similar lengths; then the epoch's batches are shuffled (seeded). Packed
    batches (`packing`) have no padding to save, so their draws keep the epoch's shuffled order (and
    so its mix of tasks in every batch): consecutive draws fill a row up to `max_tokens`. Every draw
    of the epoch lands in exactly one batch; a draw longer than `max_tokens` forms a batch of its own.

    Attributes:
        max_tokens: the budget of one batch on one rank: rows x longest row for padded batches,
            the sum of the rows' lengths with `packing` (prompt, visual and response tokens).
        packing: batches are packed into one row (cost: the sum of lengths).
        window: draws per length-sorting window of padded batches; larger windows pad less but make
            batches more alike in length, hence in task (the epoch's task ratios stay exact either way).
            Not used with `packing`.
    """

    max_tokens: int
    packing: bool = False
    window: int = 512

    def __post_init__(self) -> None:
        for name in ("max_tokens", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenBudget: {name}={value!r}; expected an int >= 1")
        if not isinstance(self.packing, bool):
            raise ValueError(f"TokenBudget: packing={self.packing!r}; expected true or false")

    def cost(self, lengths: np.ndarray) -> int:
        """Tokens one batch of rows of these lengths occupies."""
        if len(lengths) == 0:
            return 0
        return int(lengths.sum()) if self.packing else int(lengths.max()) * len(lengths)


def plan_batches(lengths: np.ndarray, budget: TokenBudget, rng: np.random.Generator) -> list[np.ndarray]:
    """Group positions `0..len(lengths)-1` of an epoch's draws into batches under `budget`, in a seeded order.

    Args:
        lengths: tokens of each draw, in the epoch's (shuffled) order.
        budget: the token budget.
        rng: shuffles the order of the batches.

    Returns:
        The batches, each an array of positions into `lengths` (ascending length inside a padded batch,
        draw order inside a packed one).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    batches: list[np.ndarray] = []
    step = len(lengths) if budget.packing else budget.window
    for start in range(0, len(lengths), max(step, 1)):
        window = np.arange(start, min(start + step, len(lengths)))
        if not budget.packing:  # sorted: the newcomer is the longest row of the batch
            window = window[np.argsort(lengths[window], kind="stable")]
        rows: list[int] = []
        total = longest = 0
        for i, n in zip(window.tolist(), lengths[window].tolist()):
            cost = total + n if budget.packing else n * (len(rows) + 1)
            if rows and cost > budget.max_tokens:
                batches.append(np.array(rows, dtype=np.int64))
                rows, total, longest = [], 0, 0
            rows.append(i)
            total, longest = total + n, max(longest, n)
        if rows:
            batches.append(np.array(rows, dtype=np.int64))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order.tolist()]


def split_for_ranks(batches: list[np.ndarray], num_replicas: int) -> tuple[list[np.ndarray], int]:
    """Make the number of batches a multiple of `num_replicas`, so every rank takes as many steps.

    Batches are split, not samples dropped or repeated: the batch with the most rows (the first such)
    is halved until the count divides. Only when no batch has two rows left are batches repeated from
    the start of the list (as a `DistributedSampler` pads), and the number repeated is returned.

    Returns:
        (the batches, rank r taking positions r, r + R, ...; how many were repeated).
    """
    out = list(batches)
    while len(out) % num_replicas:
        k = max(range(len(out)), key=lambda j: len(out[j]))
        if len(out[k]) < 2:
            break
        half = len(out[k]) // 2
        out[k : k + 1] = [out[k][:half], out[k][half:]]
    repeated = (-len(out)) % num_replicas
    out.extend(out[i % len(out)] for i in range(repeated))
    return out, repeated
