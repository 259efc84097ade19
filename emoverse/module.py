"""`EmoVerseModule`: the LightningModule that trains and evaluates a backbone on AMT tasks."""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
import torch
from PIL import Image
from torch import nn

from emoverse import evaluation
from emoverse.backbones import Backbone, BackboneProcessor, create_backbone
from emoverse.curriculum.curriculum import Curriculum
from emoverse.data.batches import GenerationBatch, GroupBatch, TrainBatch
from emoverse.data.record import Utterance
from emoverse.evaluation import CLOSED_ANSWERS, SPLITS, ClosedAnswers
from emoverse.objectives.sft import SFT
from emoverse.schedule import StageSchedule, check_optimizer_args
from emoverse.tasks import get_task, list_tasks
from emoverse.tasks.base import Task, check_media_support, default_media

DEFAULT_TASKS = ["msa", "mer", "fer", "eri", "ecpe"]
TRAINED_KEY = "emoverse_trained"
"""Checkpoint entry: every weight that has trained so far (a stage may have trained the vision encoder)."""
OBJECTIVES_KEY = "emoverse_objectives"
"""Checkpoint entry: each stage's objective state by stage name (`Objective.state_dict`, e.g. a GRPO stage's
stage-start reference weights), where it has any."""
_PYTHON_BUILT = "python-object:"


class EmoVerseModule(pl.LightningModule):
    """Vision encoder (frozen) → projector (trained) → language model with LoRA, on the AMT tasks.

    Args:
        backbone: a registered backbone name (see `list_backbones()`) or a `Backbone` instance
            (in YAML: `class_path`/`init_args`).
        backbone_args: keyword overrides for a named backbone's preset.
        tasks: the tasks trained and evaluated.
        task_args: constructor arguments per task, e.g. `{"mer": {"template": "..."}}`, and what its prompts
            show, `{"mer": {"media": ["frames", "audio"]}}` (`Task.media`); a task without `media` shows what
            the backbone takes (`default_media`: the frames, and the audio on a backbone that hears).
        lora_r, lora_alpha, lora_dropout: LoRA settings (the paper: r=8, alpha=32).
        lora_targets: last names of the language model's linear layers that get adapters (e.g.
            `[q_proj, v_proj]`); default: all of them. Never layers outside the language model.
        trainable: parts trained ("projector", "lora", "vision"). With a curriculum its stages say
            what trains (None = the first stage's parts; a different list is an error naming both);
            without one None = ["projector", "lora"].
        curriculum: the stages of the run (`emoverse fit` links the YAML's `curriculum:`): it sizes
            the LR schedule, gives each stage's lr and the parts the optimizer holds.
        lr: peak learning rate (the paper: 1e-5); warm-up then cosine decay to zero; a stage's
            `lr` replaces it during that stage.
        warmup_ratio: share of the optimizer steps spent warming up linearly.
        weight_decay: AdamW weight decay.
        gradient_checkpointing: recompute LLM activations in the backward pass to save memory.
        predictions_path: where `test` writes its JSONL (default: `{log_dir}/test_predictions.jsonl`);
            each validation's answers go to `{log_dir}/val_predictions.jsonl` (the last one kept).
        closed_answers: how validation, test, predict and `analyze` answer a task with a closed answer set
            (`Task.choices`: MSA, MER): "generate" (default: greedy generation, parsed) or "likelihood" (the most
            likely allowed answer given the prompt, lm-evaluation-harness multiple choice; docs/evaluation.md).
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
        lora_targets: list[str] | None = None,
        trainable: list[str] | None = None,
        curriculum: Curriculum | None = None,
        lr: float = 1e-5,
        warmup_ratio: float = 0.03,
        weight_decay: float = 0.0,
        gradient_checkpointing: bool = False,
        predictions_path: str | None = None,
        closed_answers: ClosedAnswers = "generate",
    ) -> None:
        super().__init__()
        check_optimizer_args(lr, warmup_ratio, weight_decay)  # before the backbone is built: fail fast, named
        if closed_answers not in CLOSED_ANSWERS:
            raise ValueError(f"EmoVerseModule: closed_answers={closed_answers!r}; expected one of {CLOSED_ANSWERS}")
        if isinstance(backbone, str) and backbone.startswith(_PYTHON_BUILT):
            raise ValueError(f"this module was built with a {backbone[len(_PYTHON_BUILT):]} object, which a checkpoint "
                             "cannot rebuild: pass backbone=<the same backbone> to load_from_checkpoint")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["curriculum"])
        if isinstance(self.hparams.get("backbone"), nn.Module):
            # a Backbone passed as an object (LightningCLI's class_path config is kept as it is)
            self.hparams["backbone"] = _PYTHON_BUILT + type(backbone).__qualname__
        unknown = [t for t in tasks if t not in list_tasks()]
        if unknown or not tasks:
            raise ValueError(f"tasks={tasks}: unknown {unknown}; expected a non-empty list from {list_tasks()}")
        self.backbone = create_backbone(backbone, **(backbone_args or {})) if isinstance(backbone, str) else backbone
        # every backbone trains in train mode: `from_pretrained` returns eval mode and Lightning keeps each module's
        # mode at fit start, so a loaded LLM's dropout would silently stay off (one rule here, for every backbone)
        self.backbone.train()
        self.backbone.add_lora(lora_r, lora_alpha, lora_dropout, lora_targets, gradient_checkpointing)
        self._ever_trained: set[str] = set()
        self._trainable_changed = False  # set_trainable ran since the last optimizer step recorded the parts
        self._before_restore: set[str] | None = None  # the trainable names while a strategy restores after setup
        self.curriculum = curriculum
        self.set_trainable(_initial_parts(trainable, curriculum))
        self._record_trained()
        self.tasks: dict[str, Task] = {t: get_task(t, **(task_args or {}).get(t, {})) for t in tasks}
        accepts = self.backbone.processor.modalities
        for name, task in self.tasks.items():  # unless configured, a task shows what the backbone takes
            if "media" not in (task_args or {}).get(name, {}):
                task.media = default_media(accepts)
        check_media_support(self.tasks, accepts, backbone if isinstance(backbone, str) else type(backbone).__name__)
        for stage in curriculum.stages if curriculum is not None else ():
            stage.objective.check_model(stage, self.tasks, self.backbone)
        self.metrics = nn.ModuleDict({f"{split}_{t}": task.new_metric() for split in SPLITS
                                      for t, task in self.tasks.items()})
        self._predictions: IO[str] | None = None
        self.predictions_file: str | None = None
        self._objective = SFT()  # without a curriculum: one supervised stage

    @property
    def processor(self) -> BackboneProcessor:
        """The backbone's processor (the datamodule's collator uses it)."""
        return self.backbone.processor

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Response-token cross-entropy (`Backbone.loss`): `loss`, `sample_loss_sum`, `sample_tokens`."""
        return self.backbone.loss(batch)

    def set_trainable(self, parts: Collection[str]) -> list[nn.Parameter]:
        """Train exactly `parts` ("projector", "lora", "vision"); returns newly trainable parameters."""
        newly = self.backbone.set_trainable(list(parts))
        self._trainable_changed = True
        return newly

    def on_fit_start(self) -> None:
        # Strategies that restore after setup (FSDP2, DeepSpeed) load the optimizer state right after this
        # hook and skip parameters that do not require grad: every part the optimizer holds trains while
        # they load, so a part a later stage trained keeps its state (the stage's parts are set again at
        # its first batch; see on_train_start for parts that never trained).
        if self.trainer.strategy.restore_checkpoint_after_setup:
            self._before_restore = {n for n, p in self.named_parameters() if p.requires_grad}
            self.set_trainable(self._optimizer_parts())

    def on_train_start(self) -> None:
        before, self._before_restore = self._before_restore, None
        if before is None:
            return
        # torch.distributed.checkpoint initialises the state of every trainable parameter with a zero
        # step before loading; a parameter that never trained must start its Adam moments (and bias
        # correction) from nothing, as in a run that was never stopped
        for name, param in self.named_parameters():
            if name not in self._ever_trained:
                for optimizer in self.trainer.optimizers:
                    optimizer.state.pop(param, None)
            param.requires_grad_(name in before)

    def _optimizer_parts(self) -> list[str]:
        """The parts the optimizer holds: every part some stage trains (or `trainable`)."""
        if self.curriculum is not None:
            return self.curriculum.parts
        return list(self.hparams.trainable or _DEFAULT_PARTS)

    def _record_trained(self) -> None:
        self._ever_trained |= {n for n, p in self.named_parameters() if p.requires_grad}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._trainable_changed:  # what an optimizer step updates goes into the checkpoints
            self._record_trained()
            self._trainable_changed = False

    # steps -----------------------------------------------------------------------------------

    def training_step(self, batch: TrainBatch | GroupBatch, batch_idx: int) -> torch.Tensor:
        """The loss of the running stage's objective (`Objective.training_step`, which logs what it does)."""
        if self.curriculum is None:
            return self._objective.training_step(self, batch, 0)
        index = self.curriculum.stage_of(self.trainer.current_epoch)
        return self.curriculum.stages[index].objective.training_step(self, batch, index)

    def _evaluate(self, batch: GenerationBatch, split: str) -> list[dict[str, Any]]:
        rows = evaluation.answer(self.backbone, batch, self.tasks, closed=self.hparams.closed_answers)
        evaluation.score(rows, self.tasks, {t: self.metrics[f"{split}_{t}"] for t in self.tasks})
        return rows

    def _log_metrics(self, split: str) -> None:
        """Log `{split}/{task}/{metric}` for every task that was evaluated, then reset the metrics."""
        for name in self.tasks:
            metric = self.metrics[f"{split}_{name}"]
            # compute() syncs across ranks, so every rank must call it when any rank saw the task
            seen = self.trainer.strategy.reduce(torch.tensor(float(metric.update_called), device=self.device),
                                                reduce_op="sum")
            if not seen:
                continue
            for key, value in metric.compute().items():
                self.log(f"{split}/{name}/{key}", value.float())
            metric.reset()

    def validation_step(self, batch: GenerationBatch, batch_idx: int) -> None:
        self._write_rows(self._evaluate(batch, "val"))

    def on_validation_epoch_start(self) -> None:
        """Keep the answers of each validation in `{log_dir}/val_predictions.jsonl` (the last one wins,
        so the file stays as small as the capped val split), for the run report's per-task analyses;
        only with a logger (its run folder): without one, `log_dir` is the working directory."""
        if not self.trainer.sanity_checking and self.trainer.logger is not None:  # a run folder, not the cwd
            self._open_predictions(None, "val_predictions.jsonl")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._close_predictions()

    def on_test_epoch_start(self) -> None:
        """Open the test JSONL (default `{log_dir}/test_predictions.jsonl`; one file per rank under DDP)."""
        self._open_predictions(self.hparams.predictions_path, "test_predictions.jsonl")

    def test_step(self, batch: GenerationBatch, batch_idx: int) -> None:
        self._write_rows(self._evaluate(batch, "test"))

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self._close_predictions()

    def _open_predictions(self, path: str | None, name: str) -> None:
        log_dir = self.trainer.log_dir  # a broadcast: every rank calls it
        out = evaluation.rank_path(Path(path) if path else Path(log_dir or ".") / name, self.trainer)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._predictions = open(out, "w", encoding="utf-8")  # noqa: SIM115  (closed at the epoch end)
        self.predictions_file = str(out)

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        if self._predictions is not None:
            self._predictions.writelines(json.dumps(evaluation.prediction_row(r), ensure_ascii=False) + "\n"
                                         for r in rows)

    def _close_predictions(self) -> None:
        if self._predictions is not None:
            self._predictions.close()
            self._predictions = None

    def predict_step(self, batch: GenerationBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Rows `{id, task, prompt, generation, prediction}` as JSON data (no labels needed, no metrics)."""
        return [evaluation.prediction_row(r) for r in evaluation.answer(self.backbone, batch, self.tasks,
                                                                        closed=self.hparams.closed_answers)]

    @torch.no_grad()
    def analyze(self, frames: str | Path | Sequence[Image.Image], text: str, tasks: Collection[str] | None = None, *,
                audio: Any = None, speaker: str | None = None, context: Sequence[Utterance | Mapping[str, Any]] = (),
                turn: int | None = None, emotion: str | None = None, num_frames: int = 4,
                peak_frame: int | None = None, openface: str | Path | None = None) -> dict[str, Any]:
        """Answer each task about one clip: `{task: parsed answer}`, `None` where unreadable.

        msa gives a sentiment score (float), mer an emotion label, fer and eri text, ecpe an
        `ECPEAnswer` (pairs `(emotion_turn, cause_turn, emotion)`). All tasks but ecpe are
        answered in one batched generation.

        Args:
            frames: the clip's PIL images in time order (video tasks see up to `num_frames` of them), or
                a video file, decoded as `emoverse analyze` does (`emoverse.clip_input`: frames, audio when a
                task hears, the peak frame from `openface` or the faces).
            text: the utterance.
            audio: the clip's 16 kHz mono float32 waveform, for tasks that hear (default: a video file's track).
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
            openface: a video file's OpenFace CSV, whose peak frame fer describes.

        msa and mer answer by likelihood when the module's `closed_answers` is "likelihood".
        """
        from emoverse.analyze import analyze

        return analyze(self.backbone, self.tasks, frames, text, list(tasks or self.tasks), audio=audio, speaker=speaker,
                       context=context, turn=turn, emotion=emotion, num_frames=num_frames, peak_frame=peak_frame,
                       openface=openface, closed=self.hparams.closed_answers)

    # optimisation and checkpoints ------------------------------------------------------------

    def configure_model(self) -> None:
        """Under `ModelParallelStrategy` (FSDP2): shard by decoder layer, LoRA adapters in units of their own."""
        if self.device_mesh is not None:
            from emoverse.distributed import fully_shard_backbone

            fully_shard_backbone(self, self.device_mesh["data_parallel"])
            # the strategy loads a checkpoint's weights itself, before on_load_checkpoint could complete
            # a trainable-only one with the frozen weights: let it skip the keys the checkpoint lacks
            self.strict_loading = False

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with one param group per part that ever trains (frozen ones get no gradient, so no
        update and no state), and one `LambdaLR`: warm-up + cosine times each stage's lr factor.
        Built once: stage changes only set `requires_grad`, so no optimizer state is ever rebuilt."""
        groups = [{"params": self.backbone.part_parameters(part), "name": part} for part in self._optimizer_parts()]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        schedule = self._schedule()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule(self) -> StageSchedule:
        """The LR factor per optimizer step, sized from the curriculum's epochs (they differ in length,
        which `estimated_stepping_batches`, every epoch as long as the first, gets wrong); `max_steps`
        and `limit_train_batches` still bound the span as the Trainer defines them."""
        trainer, warmup = self.trainer, self.hparams.warmup_ratio
        if self.curriculum is None or trainer.max_steps > 0 or trainer.limit_train_batches != 1.0:
            steps = trainer.estimated_stepping_batches
            if steps == float("inf") or steps < 0:  # Lightning gives max_steps (-1) for a stream
                raise ValueError("the training data has no length (a stream): set Trainer(max_steps=...) so the "
                                 "warm-up + cosine schedule knows its span")
            total = int(steps)
        else:
            total = None
        if self.curriculum is None:
            return StageSchedule(max(total or 1, 1), warmup)
        per_epoch = self.curriculum.optimizer_steps(trainer.accumulate_grad_batches)
        scales = [(stage.lr or self.hparams.lr) / self.hparams.lr for stage in self.curriculum.stages]
        stage_of_epoch = [self.curriculum.stage_of(e) for e in range(len(per_epoch))]
        starts = [sum(per_epoch[:e]) for e in range(len(per_epoch) + 1)]
        first = {s: starts[stage_of_epoch.index(s)] for s in set(stage_of_epoch)}
        end = {s: starts[len(stage_of_epoch) - stage_of_epoch[::-1].index(s)] for s in set(stage_of_epoch)}
        spans = [(first[s], end[s]) if self.curriculum.stages[s].schedule == "stage" else None for s in stage_of_epoch]
        return StageSchedule(max(total or sum(per_epoch), 1), warmup, per_epoch, [scales[s] for s in stage_of_epoch],
                             spans)

    def trainable_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The weights that train or have trained (projector, LoRA, vision if a stage trained it)."""
        state = self.state_dict() if state is None else state
        return {k: v for k, v in state.items() if k in self._ever_trained}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict(checkpoint["state_dict"])
        checkpoint[TRAINED_KEY] = sorted(self._ever_trained)
        states = {s.name: state for s in (self.curriculum.stages if self.curriculum is not None else ())
                  if (state := s.objective.state_dict())}
        if states:
            checkpoint[OBJECTIVES_KEY] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check a trainable-only checkpoint against this model and complete it with the frozen weights.

        Raises:
            ValueError: a weight the checkpoint trained is missing, or it holds weights this backbone
                does not have (a checkpoint of another backbone).
        """
        states = checkpoint.get(OBJECTIVES_KEY, {})
        for stage in self.curriculum.stages if self.curriculum is not None else ():
            if stage.name in states:
                stage.objective.load_state_dict(states[stage.name])
        if "state_dict" not in checkpoint:  # ModelParallelStrategy has loaded the weights itself
            self._ever_trained |= set(checkpoint.get(TRAINED_KEY, ()))
            return
        state = checkpoint["state_dict"]
        own = self.state_dict()
        trained = set(checkpoint.get(TRAINED_KEY, state))
        foreign = sorted(set(state) - set(own))
        if foreign:
            raise ValueError(f"checkpoint holds {len(foreign)} weights this backbone does not have (e.g. {foreign[:3]}); "
                             "it was made with another backbone or LoRA setting")
        missing = sorted(trained - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trained weights (e.g. {missing[:3]}); "
                             "it is truncated or was written by another version")
        for key, value in own.items():
            state.setdefault(key, value)
        self._ever_trained |= trained


_DEFAULT_PARTS = ("projector", "lora")


def _initial_parts(trainable: list[str] | None, curriculum: Curriculum | None) -> list[str]:
    """The one rule for what trains first: a curriculum's first stage, which `trainable` may restate but not contradict."""
    if curriculum is None:
        return list(trainable) if trainable is not None else list(_DEFAULT_PARTS)
    first = curriculum.stages[0]
    if trainable is not None and sorted(trainable) != sorted(first.train):
        raise ValueError(f"EmoVerseModule(trainable={list(trainable)}) but the curriculum's first stage "
                         f"{first.name!r} trains {first.train}; with a curriculum each stage's `train` decides: "
                         "drop `trainable` or set the stage's `train`")
    return list(first.train)
