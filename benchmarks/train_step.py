"""Median training-step time: EmoVerseModule under Lightning vs a plain PyTorch loop vs a
transformers `Trainer` + peft (what ms-swift and LLaMA-Factory build on), for two backbones: the
composed `tiny` and the transformers-native `tiny_llava` (LlavaForConditionalGeneration).

All three train the same backbone (same LoRA, same AdamW settings) on the same pre-collated
demo batches, so data loading is out of the picture and the ratios show each framework's
overhead around the same forward/backward. A fourth figure runs the Trainer with the model's own
`labels=` loss (logits over the whole sequence, the usual LLaVA-style path), against emoverse's
loss that computes logits only at response positions.

    python benchmarks/train_step.py [--backbones tiny tiny_llava] [--steps 30] [--warmup 5] [--batch-size 8] [--repeats 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from emoverse import AMTDataModule, EmoVerseModule, make_demo_amt
from emoverse.data.batches import TrainBatch

BACKBONE = "tiny"


def fresh_module() -> EmoVerseModule:
    torch.manual_seed(0)
    return EmoVerseModule(BACKBONE, lr=1e-3, lora_dropout=0.0, warmup_ratio=0.0)


def demo_batches(root: Path, n: int, batch_size: int) -> list[TrainBatch]:
    module = fresh_module()
    dm = AMTDataModule(str(root), batch_size=batch_size, processor=module.processor, tasks=module.tasks)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


def plain_loop(batches: list[TrainBatch]) -> list[float]:
    module = fresh_module()
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for batch in batches:
        t = time.perf_counter()
        module(batch)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times


class _Stamps(pl.Callback):
    def __init__(self) -> None:
        self.t: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.t.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.t.append(time.perf_counter())


def lightning_fit(batches: list[TrainBatch]) -> list[float]:
    module = fresh_module()
    stamps = _Stamps()
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer = pl.Trainer(max_steps=len(batches), accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[stamps],
                         limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    return [b - a for a, b in zip(stamps.t, stamps.t[1:])]


class _Wrapped(nn.Module):
    """The module's forward behind the `model(**inputs) -> {"loss": ...}` interface Trainer expects."""

    def __init__(self, module: EmoVerseModule, hf_loss: bool) -> None:
        super().__init__()
        self.module, self.hf_loss = module, hf_loss

    def forward(self, inputs: dict, labels: torch.Tensor) -> dict:
        if not self.hf_loss:
            return {"loss": self.module(TrainBatch(inputs, labels, tasks=[], ids=[]))["loss"]}
        backbone = self.module.backbone  # the model's own `labels=` loss: logits over every position
        return {"loss": backbone.core(**backbone.cast_inputs(inputs), labels=labels).loss}


class _HFStamps(TrainerCallback):
    def __init__(self) -> None:
        self.t: list[float] = []

    def on_step_begin(self, *args, **kwargs) -> None:
        self.t.append(time.perf_counter())

    def on_train_end(self, *args, **kwargs) -> None:
        self.t.append(time.perf_counter())


class _Listed(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def hf_trainer(batches: list[TrainBatch], hf_loss: bool) -> list[float]:
    model = _Wrapped(fresh_module(), hf_loss)
    stamps = _HFStamps()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=len(batches), per_device_train_batch_size=1, learning_rate=1e-3,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, use_cpu=True, report_to=[],
        save_strategy="no", logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    data = _Listed([{"inputs": b.inputs, "labels": b.labels} for b in batches])
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=lambda xs: xs[0],
                      callbacks=[stamps])
    trainer.train()
    return [b - a for a, b in zip(stamps.t, stamps.t[1:])]


def measure(batches: list[TrainBatch], warmup: int, repeats: int) -> dict[str, float]:
    """Median step times (ms) of the four runs, interleaved and reversed each repeat so load drift and
    position effects hit every run alike."""
    runs = {"plain_loop": lambda: plain_loop(batches), "emoverse_lightning": lambda: lightning_fit(batches),
            "hf_trainer_peft": lambda: hf_trainer(batches, hf_loss=False),
            "hf_trainer_peft_full_logits": lambda: hf_trainer(batches, hf_loss=True)}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for _ in range(repeats):
        for name in order:
            samples[name] += runs[name]()[warmup:]
        order.reverse()
    return {name: statistics.median(v) * 1000 for name, v in samples.items()}


def main() -> None:
    global BACKBONE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "tiny_llava"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4, help="alternate the runs this many times")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp()) / "amt"
    make_demo_amt(root, seed=0)
    figures: dict[str, object] = {}
    for BACKBONE in args.backbones:
        med = measure(demo_batches(root, args.steps, args.batch_size), args.warmup, args.repeats)
        for name, ms in med.items():
            print(f"{BACKBONE:12s} {name:30s} median step {ms:8.2f} ms")
        figures.update({f"{BACKBONE}_{k}_ms": round(v, 2) for k, v in med.items()})
        figures[f"{BACKBONE}_ratio_emoverse_vs_plain"] = round(med["emoverse_lightning"] / med["plain_loop"], 3)
        figures[f"{BACKBONE}_ratio_emoverse_vs_hf_trainer"] = round(med["emoverse_lightning"] / med["hf_trainer_peft"], 3)
        figures[f"{BACKBONE}_ratio_emoverse_vs_hf_trainer_full_logits"] = round(
            med["emoverse_lightning"] / med["hf_trainer_peft_full_logits"], 3)
    figures.update(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, repeats=args.repeats,
                   threads=torch.get_num_threads())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
