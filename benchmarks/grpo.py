"""The cost of one GRPO step against one supervised step on the same prompts, and the throughput of
sampling the G answers in one batched, KV-cached generation against one answer at a time.

Both steps train the same tiny backbone (LoRA, AdamW) on the same (record, task) pairs of the demo
AMT: the supervised step on `B` rows `[prompt; gold answer]`, the GRPO step on the same `B` prompts,
each with `G` sampled answers (generation, rewards, reference and policy forwards, backward).

    python benchmarks/grpo.py [--prompts 8] [--group 4] [--tokens 8] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from emoverse import AMTDataModule, EmoVerseModule, Stage, make_demo_amt
from emoverse.backbones.base import Sampling
from emoverse.curriculum import Curriculum
from emoverse.data.collator import AMTCollator
from emoverse.objectives import GRPO
from emoverse.objectives.grpo import grpo_step


def timed(fn, steps: int, device: str) -> float:
    """Median seconds of `fn()` over `steps` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="B, prompts per step")
    parser.add_argument("--group", type=int, default=4, help="G, answers per prompt")
    parser.add_argument("--tokens", type=int, default=8, help="max new tokens per answer")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp()) / "amt"
    make_demo_amt(root, seed=0, num_monologues=80, num_dialogues=10)
    stage = Stage(name="rl", ratios={"mer": 1, "msa": 1},
                  objective=GRPO(group_size=args.group, max_new_tokens={"mer": args.tokens, "msa": args.tokens}))
    module = EmoVerseModule("tiny", lora_dropout=0.0, lr=1e-4, curriculum=Curriculum([stage])).to(args.device)
    data = AMTDataModule(str(root), batch_size=args.prompts, num_frames=4, processor=module.processor,
                         tasks=module.tasks, curriculum=module.curriculum)
    data.setup("fit")
    group_batch = next(iter(data.train_dataloader())).to(torch.device(args.device))
    pairs = list(zip(group_batch.records[::args.group], group_batch.tasks[::args.group]))
    ds = data.datasets["train"]
    index = {ds.index.entries[i].meta["id"]: i for i in range(len(ds))}
    sft_batch = AMTCollator(module.processor, "train")([ds[(index[r.id], t)] for r, t in pairs]).to(args.device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()

    def sft() -> None:
        module(sft_batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def grpo() -> None:
        grpo_step(module.backbone, group_batch, module.tasks, stage.objective)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sampling = Sampling(1.0, 1.0)
    inputs = group_batch.inputs
    rows = inputs["input_ids"].shape[0]
    frames = inputs["pixel_values"].shape[0] // rows

    def batched() -> None:
        with torch.no_grad():
            module.backbone.generate_ids(inputs, args.tokens, sampling)

    def one_at_a_time() -> None:
        with torch.no_grad():
            for k in range(rows):
                row = {"input_ids": inputs["input_ids"][k:k + 1], "attention_mask": inputs["attention_mask"][k:k + 1],
                       "pixel_values": inputs["pixel_values"][k * frames:(k + 1) * frames]}
                module.backbone.generate_ids(row, args.tokens, sampling)

    t_sft, t_grpo = timed(sft, args.steps, args.device), timed(grpo, args.steps, args.device)
    module.eval()
    t_batched, t_single = timed(batched, args.steps, args.device), timed(one_at_a_time, max(args.steps // 3, 1), args.device)
    print(f"B={args.prompts} prompts, G={args.group}, max {args.tokens} new tokens, device {args.device}, "
          f"tiny backbone, {args.steps} steps (medians)")
    print(f"supervised step {t_sft * 1e3:.1f} ms, GRPO step {t_grpo * 1e3:.1f} ms: GRPO / SFT = {t_grpo / t_sft:.2f}x")
    print(f"sampling {rows} answers: batched {t_batched * 1e3:.1f} ms, one at a time {t_single * 1e3:.1f} ms: "
          f"batched is {t_single / t_batched:.2f}x faster")
    print(json.dumps({"sft_step_ms": round(t_sft * 1e3, 1), "grpo_step_ms": round(t_grpo * 1e3, 1),
                      "ratio_grpo_vs_sft": round(t_grpo / t_sft, 2), "sampling_batched_ms": round(t_batched * 1e3, 1),
                      "sampling_one_at_a_time_ms": round(t_single * 1e3, 1),
                      "ratio_one_at_a_time_vs_batched": round(t_single / t_batched, 2), "prompts": args.prompts,
                      "group": args.group, "max_new_tokens": args.tokens, "steps": args.steps}))


if __name__ == "__main__":
    main()
