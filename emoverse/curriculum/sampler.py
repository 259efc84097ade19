"""`TaskWeightedSampler`: one rank's (record_index, task_name) draws of the current epoch, from a `Curriculum`."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler

from emoverse.curriculum.curriculum import Curriculum


class TaskWeightedSampler(DistributedSampler):
    """Yields the (record, task) pairs the bound `curriculum` assigns to `rank` in the current epoch.

    It holds no position: the epoch comes from `set_epoch` (Lightning calls it at every epoch start
    with the global epoch, so the stage follows by itself), and the position inside the epoch is the
    train loader's state (a torchdata `StatefulDataLoader` counts the draws it delivered and
    fast-forwards this deterministic sequence on resume; Lightning checkpoints that state).

    Splitting by rank is emoverse's job, done by the curriculum, and this is a real
    `DistributedSampler` (over the epoch's draws), so Lightning leaves it unwrapped whatever
    `Trainer(use_distributed_sampler=...)` says.

    Args:
        curriculum: a `Curriculum` bound to the training records (`Curriculum.bind`).
        rank: this rank.
        epoch: the global epoch to start in (its length is the loader's length).
    """

    def __init__(self, curriculum: Curriculum, rank: int = 0, epoch: int = 0) -> None:
        super().__init__(range(curriculum.epoch_length(epoch)), num_replicas=curriculum.num_replicas, rank=rank,
                         shuffle=True, seed=curriculum.seed)
        self.curriculum = curriculum
        self.set_epoch(epoch)

    @property
    def stage(self) -> int:
        """Index of the current epoch's stage."""
        return self.curriculum.stage_of(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.num_samples = self.curriculum.epoch_length(epoch)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, str]]:  # type: ignore[override]
        return iter(self.curriculum.draws(self.epoch, self.rank))

    def __len__(self) -> int:
        return self.num_samples


class TokenBudgetSampler(DistributedSampler):
    """Yields the token-budget batches (lists of (record, task) pairs) the bound `curriculum` gives `rank`.

    For a loader without automatic batching (`batch_size=None`): each item is one batch, which the
    dataset turns into a list of examples (`AMTDataModule` does this with `max_tokens`). Like
    `TaskWeightedSampler` it holds no position: the sequence is a function of (curriculum, epoch, rank)
    alone, so a `StatefulDataLoader` that delivered k batches resumes by fast-forwarding k items; every
    rank yields as many batches (`Curriculum.epoch_batches`).

    Args:
        curriculum: a `Curriculum` bound with a `TokenBudget`.
        rank: this rank.
        epoch: the global epoch to start in.
    """

    def __init__(self, curriculum: Curriculum, rank: int = 0, epoch: int = 0) -> None:
        if curriculum.budget is None:
            raise ValueError("TokenBudgetSampler: the curriculum was bound without a token budget")
        super().__init__(range(curriculum.epoch_batches(epoch)), num_replicas=curriculum.num_replicas, rank=rank,
                         shuffle=True, seed=curriculum.seed)
        self.curriculum = curriculum
        self.set_epoch(epoch)

    @property
    def stage(self) -> int:
        """Index of the current epoch's stage."""
        return self.curriculum.stage_of(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.num_samples = self.curriculum.epoch_batches(epoch)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:  # type: ignore[override]
        return iter(self.curriculum.batches(self.epoch, self.rank))

    def __len__(self) -> int:
        return self.num_samples
