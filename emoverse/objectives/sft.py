"""`SFT`: supervised fine-tuning, the default objective of a stage (cross-entropy on the tasks' answers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from emoverse.data.batches import TrainBatch
from emoverse.data.collator import AMTCollator
from emoverse.objectives.base import Objective, register_objective

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from emoverse.backbones.base import BackboneProcessor


@register_objective
class SFT(Objective):
    """Response-token cross-entropy (`Backbone.loss`) on `TrainBatch`es: prompt + gold answer, labels masked
    to the answer. Its batches may follow a token budget (`AMTDataModule(max_tokens=..., packing=...)`).

    In YAML: `objective: sft`, or no `objective` at all (the default).

    Logged: `train/loss` (mean over the batch's answer tokens), `train/{task}/loss` per task and
    `train/truncated` (examples whose dialogue context was shortened to fit).
    """

    name = "sft"
    uses_token_budget = True

    def collator(self, processor: BackboneProcessor, system_prompt: str | None = None, pack: bool = False) -> AMTCollator:
        return AMTCollator(processor, "train", system_prompt, pack=pack)

    def training_step(self, module: LightningModule, batch: TrainBatch, stage: int) -> torch.Tensor:
        if not isinstance(batch, TrainBatch):
            raise TypeError(f"SFT trains on TrainBatch (SFT.collator), got {type(batch).__name__}")
        out = module(batch)  # EmoVerseModule.forward: Backbone.loss
        n = len(batch)
        module.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        for task in sorted(set(batch.tasks)):
            rows = torch.tensor([t == task for t in batch.tasks], device=out["sample_tokens"].device)
            task_loss = out["sample_loss_sum"][rows].sum() / out["sample_tokens"][rows].sum().clamp(min=1)
            module.log(f"train/{task}/loss", task_loss, batch_size=int(rows.sum()))
        if batch.num_truncated:
            module.log("train/truncated", float(batch.num_truncated), reduce_fx="sum", batch_size=n)
        return out["loss"]
