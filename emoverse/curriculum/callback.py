"""`MultiStageCurriculum`: a Lightning callback that walks the trainer through the curriculum's stages."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DistributedSampler

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
        The sampler splits the data across ranks itself; it is a `DistributedSampler`, so Lightning
        leaves it unwrapped also under `Trainer(use_distributed_sampler=True)`.
      * `pl_module.set_trainable(parts) -> list[Parameter]` makes exactly `parts` trainable and returns
        the parameters that became trainable; those the optimizer lacks go into a new param group.
      * `Trainer(max_epochs=sum(stage.epochs))`.

    The stage of epoch e follows the stages' `epochs`; the sampler follows it by itself, because
    Lightning calls `sampler.set_epoch(e)` at every epoch start. The callback's state (stage,
    optimizer groups, sampler position: epoch and batches trained, counted in `on_train_batch_end`)
    is saved in checkpoints, so a resumed run rebuilds the stage's param groups before Lightning
    loads the optimizer state and continues the epoch's sample sequence where the checkpoint left
    it. The state is applied in `on_fit_start`, or, under strategies that restore callbacks only
    after it (`restore_checkpoint_after_setup`: FSDP, ModelParallel, DeepSpeed), as it is loaded.

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
        self._fit_started = False  # on_fit_start ran in this fit
        self._position = [0, 0]  # [epoch, batches trained in it on this rank]
        self._last_hook: str | None = None  # where a checkpoint written now is written from
        self._resumed_at: str | None = None  # that hook, of the checkpoint this fit resumed from

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
        self._fit_started, self._position, self._last_hook, self._resumed_at = False, [0, 0], None, None
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
        # After configure_optimizers, before Lightning loads the optimizer and loop state. Strategies
        # that restore after setup (FSDP, ModelParallel, DeepSpeed) load this callback's state only
        # after this hook: `load_state_dict` then applies it at once (see there).
        self._fit_started = True
        state, self._loaded = self._loaded, None
        if state is None:
            self._stage = None
            self._peak_lrs = {i: [base_lr(g) for g in opt.param_groups] for i, opt in enumerate(trainer.optimizers)}
            return
        self._apply(state, trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sampler, loader = self.sampler(trainer), trainer.train_dataloader
        if self._position[1] is None:
            self._position[1] = -(-sampler.consumed // _batch_size(trainer))
        if len(sampler) and sampler.consumed >= len(sampler):
            # Resumed from a checkpoint taken at an epoch's end. Lightning sized the loader with the
            # finished epoch's length; its reload for the next epoch must see the next epoch's.
            sampler.set_epoch(sampler.epoch + 1)
            if self._resumed_at == "batch_end":
                _finish_epoch_on_restart(trainer)
        self._resumed_at = None
        _check_draws_from(loader, sampler)
        _check_eval_loaders(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._enter(trainer, pl_module, self.stage_of(trainer.current_epoch))
        self.sampler(trainer).set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # before Lightning reloads the DataLoader for the next epoch, so its length is the next stage's
        self.sampler(trainer).set_epoch(trainer.current_epoch + 1)
        self._last_hook = "epoch_end"

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # Lightning skips on_train_epoch_start when it resumes from a checkpoint taken at an epoch's last batch
        index = self.stage_of(trainer.current_epoch)
        if index != self._stage:
            self._enter(trainer, pl_module, index)
        if self._position[0] != trainer.current_epoch:
            self._position = [trainer.current_epoch, 0]
        self._last_hook = "batch_start"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # counted here, not from the DataLoader: it prefetches ahead of training
        self._position = [trainer.current_epoch, self._position[1] + 1]
        self._last_hook = "batch_end"
        seen = self.sampler(trainer).seen(self.consumed(trainer))
        metrics = {f"curriculum/{task}_seen": float(n) for task, n in seen.items()}
        metrics["curriculum/stage"] = float(self._stage or 0)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._last_hook = "validation"

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

        The callback counts the batches whose `on_train_batch_end` ran in the trainer's current
        epoch (the count is part of its checkpointed state, so it continues after a restart).
        """
        epoch, batches = self._position
        batches = batches if epoch == trainer.current_epoch else 0
        return min(batches * _batch_size(trainer), len(self.sampler(trainer)))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stage": self._stage, "groups": self._groups, "peak_lrs": self._peak_lrs,
                                 "saved_at": self._last_hook}
        trainer = self._trainer
        if trainer is not None and getattr(trainer.datamodule, "train_sampler", None) is not None:
            # the position of the trainer, not of the sampler: that may already be on the next epoch
            sampler = self.sampler(trainer)
            epoch = trainer.current_epoch
            epoch_of_count, batches = self._position
            consumed = (batches if epoch_of_count == epoch else 0) * _batch_size(trainer)
            length = sampler.stage_length(sampler.stage_of(epoch))
            state["sampler"] = sampler.state_dict() | {"stage": sampler.stage_of(epoch), "epoch": epoch,
                                                       "consumed": min(consumed, length)}
            state["batches"] = batches if epoch_of_count == epoch else 0
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._fit_started and self._trainer is not None:
            # FSDP / ModelParallel / DeepSpeed: restored after on_fit_start; the optimizer exists (these
            # strategies have already loaded its state) and the loops have not run yet
            self._apply(dict(state_dict), self._trainer, self._trainer.lightning_module)
        else:
            self._loaded = dict(state_dict)  # applied in on_fit_start: the optimizer does not exist yet

    def _apply(self, state: dict[str, Any], trainer: Trainer, pl_module: LightningModule) -> None:
        """Re-enter the saved stage (trainable parts, param groups) and put the sampler at the saved sample."""
        self._stage = state["stage"]
        self._peak_lrs = {int(k): v for k, v in state["peak_lrs"].items()}
        self._groups = {int(k): v for k, v in state["groups"].items()}
        if self._stage is not None:
            pl_module.set_trainable(self.stages[self._stage].train)
        # FSDP, ModelParallel and DeepSpeed load the optimizer state themselves, before this runs
        optimizer_loaded = self._fit_started and not trainer.strategy.lightning_restore_optimizer
        for index, groups in self._groups.items():
            optimizer = trainer.optimizers[index]
            if not optimizer_loaded:
                restore_groups(trainer, pl_module, optimizer, groups)
            elif [g["params"] for g in describe_groups(pl_module, optimizer)] != [g["params"] for g in groups]:
                raise RuntimeError(
                    f"MultiStageCurriculum: the checkpoint was written in stage {self._stage} "
                    f"({self.stages[self._stage or 0].name!r}), whose optimizer groups differ from those "
                    "configure_optimizers built; "
                    f"{type(trainer.strategy).__name__} loads the optimizer state before callbacks can rebuild them, "
                    "so this resume is not supported: resume from a checkpoint of the first stage's parts"
                )
        self._resumed_at = state.get("saved_at", "batch_end")
        if "sampler" in state:
            sampler = self.sampler(trainer)
            sampler.load_state_dict(state["sampler"])
            # checkpoints written before the count was saved: derived in on_train_start
            self._position = [sampler.epoch, state.get("batches")]
        else:
            rank_zero_warn("MultiStageCurriculum: the checkpoint has no sampler position; the epoch restarts from its first sample")


def _finish_epoch_on_restart(trainer: Trainer) -> None:
    """Work around Lightning's restart from a checkpoint written at an epoch's last `on_train_batch_end`.

    Lightning (2.x) then counts the finished epoch's batches against the *next* epoch's loader length,
    which it reloads first; when the next stage is longer it would take the next epoch as already part
    done. Lightning offers no public way to say "this epoch is over", so this sets the epoch loop's
    batch counter past the end, which makes it take its own "epoch finished on restart" branch.
    `tests/test_resume.py` (slow: the epoch-end stop) catches a Lightning release that changes this.
    """
    progress = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "batch_progress", None)
    if progress is None:
        raise RuntimeError("MultiStageCurriculum: this Lightning version has no fit_loop.epoch_loop.batch_progress; "
                           "resuming from a checkpoint written at an epoch's last batch is not supported")
    progress.current.completed = sys.maxsize // 2


def _check_draws_from(loader: Any, sampler: TaskWeightedSampler) -> None:
    used = {id(getattr(loader, "sampler", None)), id(getattr(getattr(loader, "batch_sampler", None), "sampler", None))}
    if id(sampler) not in used:
        raise RuntimeError(
            "MultiStageCurriculum: the train DataLoader does not draw from datamodule.train_sampler "
            f"(its sampler is {type(getattr(loader, 'sampler', None)).__name__}); the sampler splits the data "
            "across ranks itself, so it must not be wrapped"
        )


def _check_eval_loaders(trainer: Trainer) -> None:
    """Lightning wraps plain eval samplers in a DistributedSampler under `use_distributed_sampler=True`."""
    loaders = trainer.val_dataloaders
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        sampler = getattr(loader, "sampler", None)
        if type(sampler) is DistributedSampler and trainer.world_size > 1:
            raise RuntimeError(
                "MultiStageCurriculum: Lightning wrapped the validation DataLoader in a DistributedSampler "
                "(Trainer(use_distributed_sampler=True)); AMTDataModule already gives each rank its share, so "
                "each rank would score 1/world_size**2 of the pairs: pass Trainer(use_distributed_sampler=False)"
            )


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
