"""Token-budget batches: an epoch's draws grouped under a token budget, length-sorted within windows of draws
(padded batches) or packed in the epoch's order with a bounded look-ahead (packed rows)."""

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
    so its mix of tasks in every batch): a row takes the next draws in order while they fit, then fills
    the room left from the following `lookahead` draws (`pack_rows`). Every draw of the epoch lands in
    exactly one batch; a draw longer than `max_tokens` forms a batch of its own.

    Attributes:
        max_tokens: the budget of one batch on one rank: rows x longest row for padded batches,
            the sum of the rows' lengths with `packing` (prompt, visual and response tokens).
        packing: batches are packed into one row (cost: the sum of lengths).
        window: draws per length-sorting window of padded batches; larger windows pad less but make
            batches more alike in length, hence in task (the epoch's task ratios stay exact either way).
            Not used with `packing`.
        lookahead: with `packing`, how many draws past the first one that does not fit a row may take to
            fill its remaining room (each time a draw of the task furthest below its share of the row).
            0 closes a row at the first draw that does not fit (rows of consecutive draws; on the
            quickstart 93.5-97 % full); the default 64 fills them to 97-98 % with each row's task
            shares as close to the stage's ratios (docs/data.md). A draw is only ever passed over by
            draws fewer than `lookahead` positions behind it. Not used without `packing`.
    """

    max_tokens: int
    packing: bool = False
    window: int = 512
    lookahead: int = 64

    def __post_init__(self) -> None:
        for name, least in (("max_tokens", 1), ("window", 1), ("lookahead", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"TokenBudget: {name}={value!r}; expected an int >= {least}")
        if not isinstance(self.packing, bool):
            raise ValueError(f"TokenBudget: packing={self.packing!r}; expected true or false")

    def cost(self, lengths: np.ndarray) -> int:
        """Tokens one batch of rows of these lengths occupies."""
        if len(lengths) == 0:
            return 0
        return int(lengths.sum()) if self.packing else int(lengths.max()) * len(lengths)


def plan_batches(lengths: np.ndarray, budget: TokenBudget, rng: np.random.Generator,
                 tasks: np.ndarray | None = None) -> list[np.ndarray]:
    """Group positions `0..len(lengths)-1` of an epoch's draws into batches under `budget`, in a seeded order.

    Args:
        lengths: tokens of each draw, in the epoch's (shuffled) order.
        budget: the token budget.
        rng: shuffles the order of the batches.
        tasks: with `packing`, each draw's task id: a row's look-ahead picks keep its task shares near the
            epoch's (`pack_rows`); None: one task.

    Returns:
        The batches, each an array of positions into `lengths` (ascending length inside a padded batch,
        draw order inside a packed one).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if budget.packing:
        batches = pack_rows(lengths, budget.max_tokens, budget.lookahead, tasks)
    else:
        batches = []
        for start in range(0, len(lengths), budget.window):
            # sorted: the newcomer is the longest row of the batch
            window = start + np.argsort(lengths[start:start + budget.window], kind="stable")
            rows: list[int] = []
            for i, n in zip(window.tolist(), lengths[window].tolist()):
                if rows and n * (len(rows) + 1) > budget.max_tokens:
                    batches.append(np.array(rows, dtype=np.int64))
                    rows = []
                rows.append(i)
            if rows:
                batches.append(np.array(rows, dtype=np.int64))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order.tolist()]


def pack_rows(lengths: np.ndarray, max_tokens: int, lookahead: int, tasks: np.ndarray | None = None) -> list[np.ndarray]:
    """Cut an epoch's draws, in their order, into packed rows of at most `max_tokens` tokens.

    A row opens at the earliest draw not yet packed and takes the following unpacked draws in order while
    they fit (with `lookahead=0`, that is all: rows of consecutive draws, closed at the first draw that does
    not fit, which leaves 3-6.5 % of a quickstart row empty). Then it fills the room left from the unpacked
    draws among the next `lookahead` positions from that first misfit: each time, among those that fit, one
    of the task furthest below its share of the row (the task's share of the whole epoch, i.e. the stage's
    ratios), the earliest of them; it closes when none fits. Passed-over draws open the following rows, so a
    draw is only passed over by draws fewer than `lookahead` positions behind it, rows keep the epoch's
    shuffled mix (their task shares end up as close to the ratios as consecutive rows', measured in
    `tests/test_token_budget.py`), and the result is a function of the draws alone (exact resume).

    Args:
        lengths: tokens of each draw, in the epoch's order.
        max_tokens: the tokens of one row (a draw longer than that is a row of its own).
        lookahead: positions past a row's first misfit it may fill from.
        tasks: each draw's task id (non-negative ints); None: one task.

    Returns:
        The rows in the order they were opened, each an ascending array of positions into `lengths`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    tasks = np.zeros(n, dtype=np.int64) if tasks is None else np.asarray(tasks, dtype=np.int64)
    share = np.bincount(tasks, minlength=1) / max(n, 1)
    free = np.ones(n, dtype=bool)
    rows: list[np.ndarray] = []
    first = 0
    while True:
        while first < n and not free[first]:
            first += 1
        if first == n:
            return rows
        row, total, p = [], 0, first
        while p < n and (not free[p] or not row or total + lengths[p] <= max_tokens):  # in order while they fit
            if free[p]:
                row.append(p)
                total += int(lengths[p])
                free[p] = False
            p += 1
        if lookahead and p < n:
            counts = np.bincount(tasks[row], minlength=len(share)).astype(np.float64)
            span = np.arange(p, min(p + lookahead, n))
            while True:
                fits = span[free[span] & (lengths[span] <= max_tokens - total)]
                if not len(fits):
                    break
                # the task furthest below its share of the row once it holds one more draw; earliest among ties
                k = int(fits[np.argmax(share[tasks[fits]] * (len(row) + 1) - counts[tasks[fits]])])
                row.append(k)
                total += int(lengths[k])
                free[k] = False
                counts[tasks[k]] += 1
        rows.append(np.array(sorted(row), dtype=np.int64))


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
