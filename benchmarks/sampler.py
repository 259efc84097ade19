"""Draws per second of the curriculum's TaskWeightedSampler on an AMT-sized pool (~40k records, the M2SE stages).

Baseline: the tiny EmoVerse model's training steps per second on CPU (`steps_per_second`, batch 8);
the sampler should draw at least 100x faster so that it never shows up in a profile.

Run: `python benchmarks/sampler.py`. The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import torch

from emoverse.curriculum import Curriculum, TaskWeightedSampler, m2se_stages
from emoverse.data.demo import amt_label_sets

N_RECORDS = 40_000
REPEATS = 7


def amt_like(n: int = N_RECORDS, seed: int = 0) -> list[set[str]]:
    return amt_label_sets(n, seed)


def draws_per_second(records: list[set[str]]) -> tuple[float, float]:
    """Median draws/s over REPEATS full passes (every epoch of both stages, list generation included)."""
    curriculum = Curriculum(m2se_stages(), seed=0)
    curriculum.bind(records)
    sampler = TaskWeightedSampler(curriculum)
    rates = []
    for repeat in range(REPEATS):
        start, n = time.perf_counter(), 0
        for epoch in range(curriculum.total_epochs):
            sampler.set_epoch(epoch + repeat * curriculum.total_epochs)  # fresh epochs: list generation timed too
            for _ in sampler:
                n += 1
        rates.append(n / (time.perf_counter() - start))
    build = time.perf_counter()
    Curriculum(m2se_stages(), seed=0).bind(records)
    return statistics.median(rates), time.perf_counter() - build


def steps_per_second(batch_size: int = 8, warmup: int = 3, steps: int = 20) -> float | None:
    """Training steps/s of the tiny EmoVerse model on CPU: median over `steps` timed steps after `warmup`.

    One step = forward + backward + AdamW step on a demo batch of `batch_size` (batches are collated
    beforehand, so data loading is not timed). None while `emoverse.module` is unavailable.
    """
    try:
        from emoverse import AMTDataModule, EmoVerseModule, make_demo_amt
    except ImportError:
        return None
    torch.manual_seed(0)
    module = EmoVerseModule("tiny", lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        make_demo_amt(tmp, seed=0, num_monologues=200, num_dialogues=40)
        data = AMTDataModule(tmp, batch_size=batch_size, processor=module.processor, tasks=module.tasks)
        data.setup("fit")
        loader = iter(data.train_dataloader())
        batches = [next(loader) for _ in range(warmup + steps)]
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    module.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        module(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times[warmup:])


def main() -> None:
    records = amt_like()
    rate, build_s = draws_per_second(records)
    print(f"TaskWeightedSampler: {rate:,.0f} draws/s (median of {REPEATS}), {N_RECORDS:,} records, M2SE stages")
    print(f"construction (pools, quotas): {build_s * 1000:.1f} ms")
    figures: dict[str, float | None] = {"draws_per_second": rate, "construction_seconds": build_s, "steps_per_second": None, "ratio": None}
    steps = steps_per_second()
    if steps:
        figures["steps_per_second"] = steps
        figures["ratio"] = rate / steps
        print(f"tiny model: {steps:.2f} steps/s -> sampler is {rate / steps:,.0f}x faster (goal: >= 100x)")
    else:
        print("tiny model steps/s: unavailable (emoverse.module not ready); no ratio")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
