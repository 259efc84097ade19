"""`MultiStageCurriculum`: a Lightning callback that walks the trainer through the curriculum's stages."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from emoverse.curriculum._optim import (
    add_param_group,
    base_lr,
    describe_groups,
    restore_groups,
    set_peak_lr,
)
from emoverse.curriculum.m2se import m2se_stages
from emoverse.curriculum.sampler import TaskWeightedSampler
from emoverse.curriculum.stage import Stage


class MultiStageCurriculum(Callback):
    """Switches the task mix, the trainable parts and the lr at stage boundaries (by epochs).

    Protocol with the rest of the trainer:
      * `trainer.datamodule.use_curriculum(stages)` is called in `setup("fit")` and must build the
        `TaskWeightedSampler` that its train DataLoader uses, exposed as `datamodule.train_sampler`.
        The DataLoader must not be re-wrapped in a DistributedSampler:
        `Trainer(use_distributed_sampler=False)` when training on several devices.
      * `pl_module.set_trainable(parts) -> list[Parameter]` makes exactly `parts` trainable and returns
        the parameters that became trainable; those the optimizer lacks go into a new param group.
      * `Trainer(max_epochs=sum(stage.epochs))`.

    The stage of epoch e follows the stages' `epochs`; the sampler follows it by itself, because
    Lightning calls `sampler.set_epoch(e)` at every epoch start. The callback's state (stage,
    optimizer groups, sampler position) is saved in checkpoints, so a resumed run rebuilds the
    stage's param groups before Lightning loads the optimizer state and continues the epoch's
    sample sequence where the checkpoint left it.

    Args:
        stages: the curriculum; None = the paper's M2SE stages (`m2se_stages()`).
    """

    def __init__(self, stages: list[Stage] | None = None) -> None:
        self.stages = list(stages) if stages is not None else m2se_stages()
        if not self.stages:
            raise ValueError("MultiStageCurriculum: stages=[]; expected at least one Stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"MultiStageCurriculum: stage names {names} must be distinct")
        self._trainer: Trainer | None = None
        self._stage: int | None = None  # the stage whose parts/lr are applied
        self._groups: dict[int, list[dict[str, Any]]] = {}  # optimizer index -> described groups
        self._peak_lrs: dict[int, list[float]] = {}  # optimizer index -> configured peak lr per group
        self._loaded: dict[str, Any] | None = None

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def stage_of(self, epoch: int) -> int:
        """The stage index of a global epoch (epochs past the end stay in the last stage)."""
        for index, stage in enumerate(self.stages):
            if epoch < stage.epochs:
                return index
            epoch -= stage.epochs
        return len(self.stages) - 1

    def sampler(self, trainer: Trainer) -> TaskWeightedSampler:
        sampler = getattr(trainer.datamodule, "train_sampler", None)
        if not isinstance(sampler, TaskWeightedSampler):
            raise TypeError(
                f"MultiStageCurriculum: trainer.datamodule.train_sampler is {type(sampler).__name__}, expected the "
                "TaskWeightedSampler built by datamodule.use_curriculum(stages)"
            )
        return sampler

    # hooks ------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        use = getattr(trainer.datamodule, "use_curriculum", None)
        if not callable(use):
            raise TypeError(
                "MultiStageCurriculum needs a datamodule with `use_curriculum(stages)` (e.g. AMTDataModule); "
                f"got {type(trainer.datamodule).__name__}"
            )
        if not callable(getattr(pl_module, "set_trainable", None)):
            raise TypeError(f"MultiStageCurriculum needs `{type(pl_module).__name__}.set_trainable(parts)`")
        if trainer.max_epochs != self.total_epochs:
            msg = (
                f"MultiStageCurriculum: Trainer(max_epochs={trainer.max_epochs}) but the stages last "
                f"{self.total_epochs} epochs ({', '.join(f'{s.name}: {s.epochs}' for s in self.stages)}); "
                f"set max_epochs={self.total_epochs}"
            )
            if trainer.max_steps == -1:
                raise ValueError(msg)
            rank_zero_warn(msg + " (max_steps is set, so training may end before or after the last stage)")
        use(self.stages)
        sampler = self.sampler(trainer)
        # Lightning sizes an epoch once, when it loads the train DataLoader; stages of different
        # lengths need it reloaded each epoch (the sampler moves to the next epoch beforehand)
        if len({sampler.stage_length(i) for i in range(len(self.stages))}) > 1:
            if trainer.reload_dataloaders_every_n_epochs == 0:
                trainer.reload_dataloaders_every_n_epochs = 1
            elif trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError(
                    f"MultiStageCurriculum: Trainer(reload_dataloaders_every_n_epochs="
                    f"{trainer.reload_dataloaders_every_n_epochs}); stages of different lengths need 0 or 1"
                )
        # the first stage's parts, before configure_optimizers collects the trainable parameters
        pl_module.set_trainable(self.stages[0].train)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # runs after configure_optimizers and before Lightning restores optimizer and loop state
        state, self._loaded = self._loaded, None
        if state is None:
            self._stage = None
            self._peak_lrs = {i: [base_lr(g) for g in opt.param_groups] for i, opt in enumerate(trainer.optimizers)}
            return
        self._stage = state["stage"]
        self._peak_lrs = {int(k): v for k, v in state["peak_lrs"].items()}
        self._groups = {int(k): v for k, v in state["groups"].items()}
        if self._stage is not None:
            pl_module.set_trainable(self.stages[self._stage].train)
        for index, groups in self._groups.items():
            restore_groups(trainer, pl_module, trainer.optimizers[index], groups)
        if "sampler" in state:
            self.sampler(trainer).load_state_dict(state["sampler"])
        else:
            rank_zero_warn("MultiStageCurriculum: the checkpoint has no sampler position; the epoch restarts from its first sample")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sampler, loader = self.sampler(trainer), trainer.train_dataloader
        if len(sampler) and sampler.consumed >= len(sampler):
            # Resumed from a checkpoint taken at an epoch's end. Lightning sized the loader with the
            # finished epoch's length; its reload for the next epoch must see the next epoch's.
            sampler.set_epoch(sampler.epoch + 1)
            loop = trainer.fit_loop.epoch_loop
            if loop.restarted_on_train_batch_end:
                # Saved at the last batch's end: Lightning decides the epoch is over with
                # `completed >= num_training_batches`, but only after that reload, so a longer next
                # stage would look unfinished. Make it take its own "epoch over" branch.
                loop.batch_progress.current.completed = sys.maxsize // 2
        used = {id(getattr(loader, "sampler", None)), id(getattr(getattr(loader, "batch_sampler", None), "sampler", None))}
        if id(sampler) not in used:
            raise RuntimeError(
                "MultiStageCurriculum: the train DataLoader does not draw from datamodule.train_sampler "
                f"(its sampler is {type(getattr(loader, 'sampler', None)).__name__}); with several devices pass "
                "Trainer(use_distributed_sampler=False) so Lightning does not wrap it"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._enter(trainer, pl_module, self.stage_of(trainer.current_epoch))
        self.sampler(trainer).set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # before Lightning reloads the DataLoader for the next epoch, so its length is the next stage's
        self.sampler(trainer).set_epoch(trainer.current_epoch + 1)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # Lightning skips on_train_epoch_start when it resumes from a checkpoint taken at an epoch's last batch
        index = self.stage_of(trainer.current_epoch)
        if index != self._stage:
            self._enter(trainer, pl_module, index)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        seen = self.sampler(trainer).seen(self.consumed(trainer))
        metrics = {f"curriculum/{task}_seen": float(n) for task, n in seen.items()}
        metrics["curriculum/stage"] = float(self._stage or 0)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    # stage changes ----------------------------------------------------------------------------

    def _enter(self, trainer: Trainer, pl_module: LightningModule, index: int) -> None:
        """Apply stage `index`: trainable parts, new param groups, peak lr. Idempotent."""
        if index == self._stage:
            return
        stage = self.stages[index]
        params = pl_module.set_trainable(stage.train)
        for i, optimizer in enumerate(trainer.optimizers):
            peaks = self._peak_lrs.setdefault(i, [base_lr(g) for g in optimizer.param_groups])
            if i == 0 and params:  # new parameters go to the first optimizer
                added = add_param_group(trainer, optimizer, params, stage.lr or peaks[0])
                if added:
                    peaks.append(peaks[0])
            for g in range(len(optimizer.param_groups)):
                set_peak_lr(trainer, optimizer, g, stage.lr if stage.lr is not None else peaks[g])
            self._groups[i] = describe_groups(pl_module, optimizer)
        self._stage = index

    # checkpointing ----------------------------------------------------------------------------

    def consumed(self, trainer: Trainer) -> int:
        """Samples of the current epoch this rank has trained on: finished batches x batch size.

        `batch_progress.current.processed` counts the epoch's batches whose training step ran, also
        when a checkpoint is written from on_train_batch_end or mid-epoch validation; after a
        restart Lightning continues from that count.
        """
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return min(batches * _batch_size(trainer), len(self.sampler(trainer)))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stage": self._stage, "groups": self._groups, "peak_lrs": self._peak_lrs}
        trainer = self._trainer
        if trainer is not None and getattr(trainer.datamodule, "train_sampler", None) is not None:
            # the position of the trainer, not of the sampler: that may already be on the next epoch
            sampler = self.sampler(trainer)
            epoch = trainer.current_epoch
            consumed = trainer.fit_loop.epoch_loop.batch_progress.current.processed * _batch_size(trainer)
            length = sampler.stage_length(sampler.stage_of(epoch))
            state["sampler"] = sampler.state_dict() | {"stage": sampler.stage_of(epoch), "epoch": epoch, "consumed": min(consumed, length)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)  # applied in on_fit_start: the optimizer does not exist yet


def _batch_size(trainer: Trainer) -> int:
    loader = trainer.train_dataloader
    for size in (
        getattr(loader, "batch_size", None),
        getattr(getattr(loader, "batch_sampler", None), "batch_size", None),
        getattr(trainer.datamodule, "batch_size", None),
    ):
        if isinstance(size, int) and size > 0:
            return size
    raise RuntimeError(
        "MultiStageCurriculum: cannot tell the train DataLoader's batch size (needed to save the sampler "
        "position); use DataLoader(batch_size=...) or give the datamodule a `batch_size` attribute"
    )
