"""`EmoVerseModule`: the LightningModule that trains and evaluates a backbone on AMT tasks."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from emoverse.backbones import Backbone, create_backbone
from emoverse.data.record import Utterance
from emoverse.evaluation import SPLITS, Evaluator
from emoverse.lora import add_lora, set_trainable
from emoverse.tasks import get_task, list_tasks
from emoverse.tasks.base import Task

DEFAULT_TASKS = ["msa", "mer", "fer", "eri", "ecpe"]


class EmoVerseModule(pl.LightningModule):
    """Vision encoder (frozen) → projector (trained) → LLM with LoRA, on the AMT tasks.

    Args:
        backbone: a registered backbone name (see `list_backbones()`) or a `Backbone` instance
            (in YAML: `class_path`/`init_args`).
        backbone_args: keyword overrides for a named backbone's preset.
        tasks: the tasks trained and evaluated.
        task_args: constructor arguments per task, e.g. `{"mer": {"template": "..."}}`.
        lora_r, lora_alpha, lora_dropout: LoRA settings (the paper: r=8, alpha=32).
        trainable: parts trained from the start ("projector", "lora", "vision"); a
            `MultiStageCurriculum` may change them per stage.
        lr: peak learning rate (the paper: 1e-5); warm-up then cosine decay to zero.
        warmup_ratio: share of the optimizer steps spent warming up linearly.
        weight_decay: AdamW weight decay.
        gradient_checkpointing: recompute LLM activations in the backward pass to save memory.
        predictions_path: where `test` writes its JSONL (default: `{log_dir}/test_predictions.jsonl`).
    """

    def __init__(
        self,
        backbone: Backbone | str = "tiny",
        backbone_args: dict[str, Any] | None = None,
        tasks: list[str] = DEFAULT_TASKS,
        task_args: dict[str, dict[str, Any]] | None = None,
        lora_r: int = 8,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        trainable: list[str] = ["projector", "lora"],  # noqa: B006  (jsonargparse shows the default)
        lr: float = 1e-5,
        warmup_ratio: float = 0.03,
        weight_decay: float = 0.0,
        gradient_checkpointing: bool = False,
        predictions_path: str | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("backbone"), nn.Module):
            # a Backbone passed as an object (not by LightningCLI's class_path config, which is kept)
            # cannot be stored as a hyper-parameter: rebuild with load_from_checkpoint(backbone=...)
            self.remove_ignored_hparams(["backbone"])
        unknown = [t for t in tasks if t not in list_tasks()]
        if unknown or not tasks:
            raise ValueError(f"tasks={tasks}: unknown {unknown}; expected a non-empty list from {list_tasks()}")
        self.backbone = create_backbone(backbone, **(backbone_args or {})) if isinstance(backbone, str) else backbone
        add_lora(self.backbone, lora_r, lora_alpha, lora_dropout, gradient_checkpointing)
        self._ever_trained: set[str] = set()
        self.set_trainable(trainable)
        self.tasks: dict[str, Task] = {t: get_task(t, **(task_args or {}).get(t, {})) for t in tasks}
        self.metrics = nn.ModuleDict({f"{split}_{t}": task.new_metric() for split in SPLITS
                                      for t, task in self.tasks.items()})
        self.evaluator = Evaluator(self)
        self.strict_loading = False  # checkpoints hold only the trainable weights

    # model -----------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the projected visual tokens scattered into the image placeholders."""
        embeds = self.backbone.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.backbone.processor.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"batch has {n_slots} image placeholder tokens but no pixel_values")
            return embeds
        visual = self.backbone.encode_images(pixel_values)
        if visual.shape[0] * visual.shape[1] != n_slots:
            raise ValueError(f"{visual.shape[0]} frames x {visual.shape[1]} visual tokens do not fill the batch's "
                             f"{n_slots} image placeholders")
        return embeds.masked_scatter(slots.unsqueeze(-1), visual.to(embeds.dtype))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Response-token cross-entropy: `loss` (mean over the batch's response tokens), and per example
        the summed token loss `sample_loss_sum` over its `sample_tokens` response tokens."""
        labels = batch["labels"]
        inputs = self.embed(batch["input_ids"], batch["pixel_values"])
        targets = labels[:, 1:]
        keep = (targets != -100).any(0).nonzero().squeeze(1)  # logits only where some row has a response token
        out = self.backbone.llm(inputs_embeds=inputs, attention_mask=batch["attention_mask"], logits_to_keep=keep)
        targets = targets[:, keep]
        token_loss = nn.functional.cross_entropy(out.logits.float().transpose(1, 2), targets, reduction="none")
        counts = (targets != -100).sum(1)
        return {"loss": token_loss.sum() / counts.sum().clamp(min=1),
                "sample_loss_sum": token_loss.sum(1), "sample_tokens": counts}

    def set_trainable(self, parts: Collection[str]) -> list[nn.Parameter]:
        """Train exactly `parts` ("projector", "lora", "vision"); returns newly trainable parameters."""
        newly = set_trainable(self.backbone, parts)
        self._ever_trained |= {n for n, p in self.named_parameters() if p.requires_grad}
        return newly

    # steps -----------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        n = len(batch["tasks"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        for task in sorted(set(batch["tasks"])):
            rows = torch.tensor([t == task for t in batch["tasks"]], device=out["sample_tokens"].device)
            task_loss = out["sample_loss_sum"][rows].sum() / out["sample_tokens"][rows].sum().clamp(min=1)
            self.log(f"train/{task}/loss", task_loss, batch_size=int(rows.sum()))
        if batch["num_truncated"]:
            self.log("train/truncated", float(batch["num_truncated"]), reduce_fx="sum", batch_size=n)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluator.step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.evaluator.log_epoch("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluator.step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.evaluator.open_predictions(self.hparams.predictions_path)

    def on_test_epoch_end(self) -> None:
        self.evaluator.log_epoch("test")
        self.evaluator.close_predictions()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        return self.evaluator.predict(batch)

    @torch.no_grad()
    def analyze(self, frames: Sequence[Image.Image], text: str, tasks: Collection[str] | None = None, *,
                speaker: str | None = None, context: Sequence[Utterance | Mapping[str, Any]] = (),
                turn: int | None = None, emotion: str | None = None, num_frames: int = 4,
                peak_frame: int | None = None) -> dict[str, Any]:
        """Answer each task about one clip: `{task: parsed answer}`, `None` where unreadable.

        msa gives a sentiment score (float), mer an emotion label, fer and eri text, ecpe an
        `ECPEAnswer` (pairs `(emotion_turn, cause_turn, emotion)`). All tasks but ecpe are
        answered in one batched generation.

        Args:
            frames: the clip's PIL images in time order (video tasks see up to `num_frames` of them).
            text: the utterance.
            tasks: task names (default: all of this module's tasks).
            speaker: who says `text` (shown in the ecpe conversation).
            context: ecpe only: the earlier turns of the dialogue, as `Utterance`s or dicts
                `{"speaker", "text", "emotion"}` (optional `"turn"`, default its 1-based position);
                every turn needs its emotion, as in ECF 2.0.
            turn: ecpe only: the 1-based turn of `text` (default: `len(context) + 1`).
            emotion: ecpe only: the emotion of `text`; when `None`, the module's mer answer is used
                (ecpe is `None` if that answer is unreadable).
            num_frames: frames sampled uniformly for video tasks (use the datamodule's `num_frames`).
            peak_frame: index of the most expressive frame, shown to fer (default: the middle one).
        """
        return self.evaluator.analyze(frames, text, list(tasks or self.tasks), speaker=speaker, context=context,
                                      turn=turn, emotion=emotion, num_frames=num_frames, peak_frame=peak_frame)

    # optimisation and checkpoints ------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(_schedule_steps(self.trainer), 1)
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The weights that train or have trained (projector, LoRA, vision if a stage trained it)."""
        state = self.state_dict() if state is None else state
        return {k: v for k, v in state.items() if k in self._ever_trained}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict(checkpoint["state_dict"])


def _schedule_steps(trainer: pl.Trainer) -> int:
    """Optimizer steps the LR schedule spans.

    Curriculum stages differ in length, which `estimated_stepping_batches` (every epoch as long as
    the first) gets wrong, so the task-weighted sampler counts them; `max_steps` and
    `limit_train_batches` still bound the run as the Trainer defines.
    """
    sampler = getattr(trainer.datamodule, "train_sampler", None)
    if sampler is None or trainer.max_steps > 0 or trainer.limit_train_batches != 1.0:
        steps = trainer.estimated_stepping_batches
        if steps == float("inf") or steps < 0:  # Lightning gives max_steps (-1) for a stream
            raise ValueError("the training data has no length (a stream): set Trainer(max_steps=...) so the "
                             "warm-up + cosine schedule knows its span")
        return int(steps)
    return sampler.total_steps(trainer.datamodule.batch_size, trainer.accumulate_grad_batches)
