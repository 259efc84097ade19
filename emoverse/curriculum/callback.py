"""`MultiStageCurriculum`: a Lightning callback that makes each curriculum stage train its own parts."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from emoverse.curriculum.curriculum import Curriculum


class MultiStageCurriculum(Callback):
    """Walks the trainer through the stages of a `Curriculum`; it holds no position of its own.

    Who owns what: the `Curriculum` knows each epoch's stage and draws; the train loader's
    `TaskWeightedSampler` follows the epoch (Lightning calls its `set_epoch`, so at a stage boundary
    it draws the next stage's mix) and the loader's state is the position inside the epoch;
    `EmoVerseModule`'s LR schedule applies each stage's lr. This callback, at every epoch's start
    (and at the first batch after a resume), makes the module train exactly the stage's `train`
    parts through `pl_module.set_trainable(parts)`. The optimizer holds one param group per part
    from the start, so a stage change (or a resume in any stage) changes no optimizer state.

    Under DDP, a part a later stage unfreezes was frozen when `DistributedDataParallel` wrapped the
    model, so DDP does not average its gradients; this callback all-reduces those (and only those)
    before each optimizer step. FSDP2 reduces them itself.

    `emoverse fit` adds this callback itself for the YAML's `curriculum:`; from Python pass it to
    the Trainer with the same `Curriculum` given to the module and the datamodule.

    Args:
        curriculum: the curriculum (the one the datamodule and the module were given).
    """

    def __init__(self, curriculum: Curriculum) -> None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError(f"MultiStageCurriculum: curriculum is a {type(curriculum).__name__}; expected a "
                            "Curriculum (in YAML: the top-level `curriculum:` key, e.g. `curriculum: {stages: [...]}`)")
        self.curriculum = curriculum
        self._applied: int | None = None  # the stage whose parts the module trains now
        self._wrapped: set[int] = set()  # parameters trainable when the strategy wrapped the model

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._applied = None
        if not callable(getattr(pl_module, "set_trainable", None)):
            raise TypeError(f"MultiStageCurriculum needs `{type(pl_module).__name__}.set_trainable(parts)`")
        total = self.curriculum.total_epochs
        if trainer.max_epochs != total:
            msg = (f"Trainer(max_epochs={trainer.max_epochs}) but the curriculum's stages last {total} epochs "
                   f"({', '.join(f'{s.name}: {s.epochs}' for s in self.curriculum.stages)}); set max_epochs={total}")
            if trainer.max_steps == -1:
                raise ValueError(msg)
            rank_zero_warn(msg + " (max_steps is set, so training may end before or after the last stage)")
        strategy, first = trainer.strategy, set(self.curriculum.stages[0].train)
        freezing = [s.name for s in self.curriculum.stages[1:] if not first <= set(s.train)]
        if freezing and trainer.world_size > 1 and isinstance(strategy, DDPStrategy) \
                and not isinstance(strategy, DeepSpeedStrategy):
            rank_zero_warn(f"MultiStageCurriculum: stage(s) {freezing} freeze parts the first stage trains; DDP "
                           "expects a gradient for every parameter that trained when it wrapped the model, so use "
                           "strategy: ddp_find_unused_parameters_true (else the first step of such a stage fails)")
        lengths = set(self.curriculum.loader_lengths())
        unit = "draws" if self.curriculum.budget is None else "draws or batches"
        if len(lengths) > 1 and trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(f"Trainer(reload_dataloaders_every_n_epochs={trainer.reload_dataloaders_every_n_epochs}) "
                             f"but the curriculum's epochs differ in length ({sorted(lengths)} {unit} per rank); "
                             "set reload_dataloaders_every_n_epochs=1 so each epoch's loader has its own length")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._wrapped = {id(p) for p in pl_module.parameters() if p.requires_grad}  # DDP has wrapped by now

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        strategy = trainer.strategy
        if trainer.world_size == 1 or not isinstance(strategy, DDPStrategy) or isinstance(strategy, DeepSpeedStrategy):
            return
        late = [p for p in pl_module.parameters() if p.requires_grad and id(p) not in self._wrapped]
        if not late:
            return
        # the same list on every rank (the stage follows the epoch); one flat all-reduce of the mean
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in late]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= trainer.world_size
        offset = 0
        for p, g in zip(late, grads, strict=True):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.train_dataloader
        if not (callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))):
            rank_zero_warn(f"MultiStageCurriculum: the train loader ({type(loader).__name__}) has no state_dict, so "
                           "a resume mid-epoch restarts the epoch's draws instead of continuing them; use torchdata's "
                           "StatefulDataLoader (AMTDataModule does)")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._enter(trainer, pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._enter(trainer, pl_module)  # a resume at an epoch's end skips on_train_epoch_start

    def _enter(self, trainer: Trainer, pl_module: LightningModule) -> None:
        index = self.curriculum.stage_of(trainer.current_epoch)
        if index != self._applied:
            pl_module.set_trainable(self.curriculum.stages[index].train)
            self._applied = index

    def state_dict(self) -> dict[str, Any]:
        return {"layout": 2}  # nothing to restore: the stage follows the epoch, the position is the loader's

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("layout") != 2:
            raise ValueError("this checkpoint predates emoverse's curriculum redesign (it keeps the position in "
                             "MultiStageCurriculum and rebuilt optimizer groups): it cannot be resumed; start a new "
                             "fit, or load its weights with EmoVerseModule.load_from_checkpoint to evaluate them")
