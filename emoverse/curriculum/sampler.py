"""The train loader's samplers: one rank's draws (`TaskWeightedSampler`) or token-budget batches
(`TokenBudgetSampler`) of the current epoch, computed by a `Curriculum`."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler

from emoverse.curriculum.curriculum import Curriculum


class _EpochSampler(DistributedSampler):
    """One rank's items of a global epoch, computed by the curriculum: no position of its own.

    The epoch comes from `set_epoch` (Lightning calls it at every epoch start with the global epoch,
    so the stage follows by itself); the position inside the epoch is the train loader's state (a
    torchdata `StatefulDataLoader` counts what it delivered and fast-forwards this deterministic
    sequence on resume; Lightning checkpoints that state). Splitting by rank is the curriculum's job,
    and this is a real `DistributedSampler`, so Lightning leaves it unwrapped whatever
    `Trainer(use_distributed_sampler=...)` says.
    """

    def __init__(self, curriculum: Curriculum, rank: int = 0, epoch: int = 0) -> None:
        self.curriculum = curriculum
        super().__init__(range(self._length(epoch)), num_replicas=curriculum.num_replicas, rank=rank,
                         shuffle=True, seed=curriculum.seed)
        self.set_epoch(epoch)

    def _length(self, epoch: int) -> int:
        raise NotImplementedError

    @property
    def stage(self) -> int:
        """Index of the current epoch's stage."""
        return self.curriculum.stage_of(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.num_samples = self._length(epoch)
        self.total_size = self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples


class TaskWeightedSampler(_EpochSampler):
    """Yields the (record, task) pairs the bound `curriculum` assigns to `rank` in the current epoch.

    Args:
        curriculum: a `Curriculum` bound to the training records (`Curriculum.bind`).
        rank: this rank.
        epoch: the global epoch to start in (its length is the loader's length).
    """

    def _length(self, epoch: int) -> int:
        return self.curriculum.epoch_length(epoch)

    def __iter__(self) -> Iterator[tuple[int, str]]:  # type: ignore[override]
        return iter(self.curriculum.draws(self.epoch, self.rank))


class TokenBudgetSampler(_EpochSampler):
    """Yields the token-budget batches (lists of (record, task) pairs) the bound `curriculum` gives `rank`.

    For a loader without automatic batching (`batch_size=None`): each item is one batch, which the
    dataset turns into a list of examples (`AMTDataModule` does this with `max_tokens`); a
    `StatefulDataLoader` that delivered k batches resumes by fast-forwarding k items, and every rank
    yields as many batches (`Curriculum.epoch_batches`).

    Args:
        curriculum: a `Curriculum` bound with a `TokenBudget`.
        rank: this rank.
        epoch: the global epoch to start in.
    """

    def __init__(self, curriculum: Curriculum, rank: int = 0, epoch: int = 0) -> None:
        if curriculum.budget is None:
            raise ValueError("TokenBudgetSampler: the curriculum was bound without a token budget")
        super().__init__(curriculum, rank, epoch)

    def _length(self, epoch: int) -> int:
        return self.curriculum.epoch_batches(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:  # type: ignore[override]
        return iter(self.curriculum.batches(self.epoch, self.rank))
