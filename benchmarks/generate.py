"""Batched (16 prompts, left padding, KV cache) vs one-at-a-time greedy generation of `emoverse.evaluation.generate`.

Both runs use `evaluation.generate` on the tiny backbone, the same demo prompts (all five tasks,
48 to 345 prompt tokens), greedy decoding and the same `max_new_tokens`; the answers must be
identical.
Figures are medians over `--repeats`; the goal is a samples/s ratio of at least 5x. torch runs
on `--threads` threads (default 1): on a small shared machine, OpenMP threads that wait for a
busy core make every op slow, whatever the batch size, which hides what batching gains.

Run: `python benchmarks/generate.py [--prompts 32] [--max-new-tokens 32] [--repeats 3] [--threads 1]`.
The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import torch

from emoverse import AMTDataModule, EmoVerseModule, evaluation, make_demo_amt
from emoverse.data.batches import Example
from emoverse.data.collator import AMTCollator

BATCH_SIZE = 16


def demo_examples(module: EmoVerseModule, n: int, root: str) -> list[Example]:
    """`n` examples of the demo AMT's val split, an equal share per task, in the evaluation order
    of `AMTDataModule` (grouped by task, as `Trainer.validate` batches them)."""
    make_demo_amt(root, seed=0, num_monologues=200, num_dialogues=40)
    dm = AMTDataModule(root, processor=module.processor, tasks=module.tasks)
    dm.setup("validate")
    ds = dm.datasets["val"]
    share = -(-n // len(module.tasks))
    pairs = [p for t in module.tasks for p in ds.pairs([t])[:share]][:n]
    if len(pairs) < n:
        raise ValueError(f"the demo val split has only {len(pairs)} pairs; ask for fewer --prompts")
    return [ds[p] for p in pairs]


def run(module: EmoVerseModule, batches: list[dict[str, Any]], max_new_tokens: int) -> tuple[float, int, list[str]]:
    """(seconds, generated tokens, answers) for generating every batch in turn."""
    llm, tokens = module.backbone.core.llm, [0]
    real = llm.generate

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = real(*args, **kwargs)
        tokens[0] += int((out != kwargs["pad_token_id"]).sum())
        return out

    llm.generate = counting
    try:
        start = time.perf_counter()
        texts = [t for b in batches for t in evaluation.generate(module.backbone, b, module.tasks, max_new_tokens)]
        return time.perf_counter() - start, tokens[0], texts
    finally:
        del llm.generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = EmoVerseModule("tiny").eval()
    with tempfile.TemporaryDirectory() as root:
        examples = demo_examples(module, args.prompts, root)
    collate = AMTCollator(module.processor, "generate")
    modes = {"batched": [collate(examples[i:i + BATCH_SIZE]) for i in range(0, len(examples), BATCH_SIZE)],
             "one_at_a_time": [collate([ex]) for ex in examples]}
    lengths = [int(n) for b in modes["one_at_a_time"] for n in b["inputs"]["attention_mask"].sum(1)]
    run(module, modes["batched"][:1], 2)  # warm-up

    figures: dict[str, Any] = {"prompts": len(examples), "batch_size": BATCH_SIZE,
                               "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "threads": args.threads,
                               "prompt_tokens_min": min(lengths), "prompt_tokens_max": max(lengths)}
    answers = {}
    for mode, batches in modes.items():
        times, tokens = [], 0
        for _ in range(args.repeats):
            seconds, tokens, answers[mode] = run(module, batches, args.max_new_tokens)
            times.append(seconds)
        median = statistics.median(times)
        figures[f"{mode}_seconds"] = median
        figures[f"{mode}_samples_per_s"] = len(examples) / median
        figures[f"{mode}_tokens_per_s"] = tokens / median
        print(f"{mode:>14}: {len(examples) / median:8.1f} samples/s  {tokens / median:9.1f} generated tokens/s  "
              f"(median of {args.repeats}: {median:.2f} s for {len(examples)} prompts, {tokens} tokens)")
    figures["identical_answers"] = answers["batched"] == answers["one_at_a_time"]
    figures["ratio_samples_per_s"] = figures["batched_samples_per_s"] / figures["one_at_a_time_samples_per_s"]
    figures["ratio_tokens_per_s"] = figures["batched_tokens_per_s"] / figures["one_at_a_time_tokens_per_s"]
    print(f"batched is {figures['ratio_samples_per_s']:.1f}x faster in samples/s (goal: >= 5x); "
          f"identical answers: {figures['identical_answers']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
