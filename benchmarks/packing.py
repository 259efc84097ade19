"""Training throughput of padded batches against token-budget batches against padding-free packing.

Baseline: today's padded training batches (`AMTDataModule(batch_size=8)`). Contenders, on the same
epoch of draws (the demo AMT, every task at equal ratio, `--samples` draws): token-budget batches
(`max_tokens`, rows x longest row) and packed rows (`max_tokens`, `packing=True`), the latter twice:
rows of consecutive draws closed at the first that does not fit (`packing_in_order`, `pack_lookahead=0`)
and rows filled from the look-ahead (`packing`, the default `pack_lookahead`), at the same budget, so
the look-ahead shows as fuller rows (`fill`: real tokens over steps x max_tokens) and fewer steps.
`max_tokens` is the smallest budget that gives no more batches, hence optimizer steps, than the
baseline (for packing: with rows of consecutive draws), so every mode trains the same samples in at
most as many steps. Batches are built by the datamodule's own
train loader beforehand (data loading is not timed); a step is forward + backward + AdamW on
`EmoVerseModule`. The modes alternate, reversed every round; the epoch time of a mode is the sum over
its steps of each step's fastest round (on a shared machine other jobs only ever add time; the median
epoch time is printed beside it). Backbones: the composed `tiny` and the transformers-native `tiny_llava`.
Also, planning only (no model runs): the fill, steps and per-row task mix of the quickstart's packed rows
(examples/configs/quickstart.yaml's curriculum and batching, `tiny`) with and without the look-ahead.

Run: `python benchmarks/packing.py [--samples 480] [--rounds 3]`. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from emoverse import AMTDataModule, EmoVerseModule, make_demo_amt
from emoverse.curriculum import Curriculum, Stage, TokenBudget

BATCH = 8
MODES = ("padded", "token_budget", "packing_in_order", "packing")
QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "configs" / "quickstart.yaml"


def module(backbone: str) -> EmoVerseModule:
    torch.manual_seed(0)
    return EmoVerseModule(backbone, lr=1e-3, lora_dropout=0.0)


def stage(m: EmoVerseModule, samples: int) -> Stage:
    return Stage(name="demo-mix", ratios={t: 1.0 for t in m.tasks}, budget="all", samples_per_epoch=samples)


def data(amt: Path, m: EmoVerseModule, samples: int, **batching: Any) -> AMTDataModule:
    dm = AMTDataModule(str(amt), batch_size=BATCH, processor=m.processor, tasks=m.tasks,
                       curriculum=Curriculum([stage(m, samples)], seed=0), **batching)
    dm.setup("fit")
    return dm


def smallest_budget(dm: AMTDataModule, m: EmoVerseModule, samples: int, steps: int, packing: bool) -> int:
    """The smallest max_tokens (to 8 tokens) whose epoch has at most `steps` batches (packed: rows of consecutive
    draws, `lookahead=0`)."""
    ds = dm.datasets["train"]
    length = functools.cache(ds.example_length)
    lo, hi = 64, 1 << 16
    while hi - lo > 8:
        mid = (lo + hi) // 2
        c = Curriculum([stage(m, samples)], seed=0)
        c.bind(ds.record_tasks, budget=TokenBudget(mid, packing, lookahead=0), lengths=length)
        if c.epoch_batches(0) <= steps:
            hi = mid
        else:
            lo = mid
    return hi


def batches(dm: AMTDataModule) -> list[dict]:
    return list(dm.train_dataloader())


def figures(batch_list: list[dict]) -> dict[str, int]:
    """Samples, real tokens and positions (tokens + padding) of the epoch."""
    tokens = positions = samples = 0
    for b in batch_list:
        ids = b["inputs"]["input_ids"]
        samples += len(b["tasks"])
        positions += ids.numel()
        tokens += int(b["packed_lengths"].sum()) if "packed_lengths" in b else int(b["inputs"]["attention_mask"].sum())
    return {"samples": samples, "tokens": tokens, "positions": positions, "steps": len(batch_list)}


def step_seconds(m: EmoVerseModule, batch_list: list[dict]) -> list[float]:
    """Seconds of each training step over the batches, in order."""
    optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    m.train()
    out = []
    for b in batch_list:
        start = time.perf_counter()
        m(b)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - start)
    return out


def run(backbone: str, amt: Path, samples: int, rounds: int) -> dict[str, Any]:
    m = module(backbone)
    padded = data(amt, m, samples)
    steps = padded.curriculum.epoch_batches(0)
    budget = smallest_budget(padded, m, samples, steps, packing=False)
    packed = smallest_budget(padded, m, samples, steps, packing=True)
    built = {"padded": batches(padded), "token_budget": batches(data(amt, m, samples, max_tokens=budget)),
             "packing_in_order": batches(data(amt, m, samples, max_tokens=packed, packing=True, pack_lookahead=0)),
             "packing": batches(data(amt, m, samples, max_tokens=packed, packing=True))}
    step_seconds(m, built["padded"][:3])  # warm-up (allocator, kernels)
    times: dict[str, list[list[float]]] = {k: [] for k in MODES}
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            times[mode].append(step_seconds(module(backbone), built[mode]))
    out: dict[str, Any] = {"max_tokens_token_budget": budget, "max_tokens_packing": packed}
    for mode in MODES:
        # each step's fastest of the rounds: other jobs on a shared machine only ever add time
        f, t = figures(built[mode]), sum(min(step) for step in zip(*times[mode]))
        median_epoch = statistics.median(sum(run) for run in times[mode])
        out[mode] = {**f, "seconds": round(t, 3), "median_epoch_seconds": round(median_epoch, 3),
                     "samples_per_s": round(f["samples"] / t, 2),
                     "tokens_per_s": round(f["tokens"] / t, 1), "padding": round(1 - f["tokens"] / f["positions"], 4)}
        if mode.startswith("packing"):  # real tokens over the rows' room
            out[mode]["fill"] = round(f["tokens"] / (f["steps"] * packed), 4)
    for mode in MODES[1:]:
        out[f"ratio_{mode}_vs_padded"] = round(out[mode]["samples_per_s"] / out["padded"]["samples_per_s"], 3)
    out["ratio_packing_vs_packing_in_order"] = round(out["packing"]["samples_per_s"] / out["packing_in_order"]["samples_per_s"], 3)
    return out


def row_mix_distance(batches: list[list[tuple[int, str]]], quotas: dict[str, int]) -> float:
    """Mean over the rows of the total-variation distance between a row's task shares (in draws) and the stage's."""
    total = sum(quotas.values())
    dist = []
    for b in batches:
        tasks = [t for _, t in b]
        dist.append(0.5 * sum(abs(tasks.count(t) / len(b) - q / total) for t, q in quotas.items()))
    return sum(dist) / len(dist)


def quickstart_rows(amt: Path) -> dict[str, Any]:
    """The quickstart's packed rows (its curriculum, max_tokens and packing; `tiny`'s exact lengths) with and
    without the look-ahead: per-epoch fill, optimizer steps and mean row task-mix distance. Planning only."""
    import dataclasses

    import yaml

    cfg = yaml.safe_load(QUICKSTART.read_text())
    batching = {k: v for k, v in cfg["data"]["init_args"].items() if k in ("max_tokens", "packing", "pack_lookahead")}
    m = module("tiny")
    c = Curriculum([Stage(**st) for st in cfg["curriculum"]["stages"]], seed=cfg["curriculum"]["seed"])
    dm = AMTDataModule(str(amt), processor=m.processor, tasks=m.tasks, curriculum=c, **batching)
    dm.setup("fit")
    in_order = Curriculum(c.stages, seed=c.seed)
    in_order.bind(dm.datasets["train"].record_tasks, budget=dataclasses.replace(dm.budget, lookahead=0),
                  lengths=lambda r, t: int(c.pair_lengths([r], [t])[0]))
    out: dict[str, Any] = {"max_tokens": dm.budget.max_tokens, "lookahead": dm.budget.lookahead}
    for name, cur in (("in_order", in_order), ("lookahead", c)):
        epochs = range(cur.total_epochs)
        stats = [cur.batch_stats(e) for e in epochs]
        mix = [row_mix_distance(cur.batches(e), cur.quotas(cur.stage_of(e))) for e in epochs]
        out[name] = {"steps": sum(st["batches"] for st in stats),
                     "fill": round(sum(st["tokens"] for st in stats) / sum(st["batches"] for st in stats) / dm.budget.max_tokens, 4),
                     "fill_per_epoch": [round(st["tokens"] / (st["batches"] * dm.budget.max_tokens), 4) for st in stats],
                     "mix_distance": round(sum(mix) / len(mix), 4), "mix_distance_per_epoch": [round(x, 4) for x in mix]}
    return out


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VISUAL_PER_FRAME = 256  # InternVL2: one 448 px tile per frame
FRAMES = {"msa": 4, "mer": 4, "eri": 4, "ecpe": 4, "fer": 1}
RESPONSE = {"msa": 2, "mer": 3, "fer": 24, "eri": 40, "ecpe": 12}  # typical answer tokens (+ end of turn)
PAPER_PACKED = 8192  # examples/configs/scale/packed_24gb.yaml's rows
PAPER_STAGES = {"stage1": {"msa": 6, "fer": 3, "mer": 1}, "stage2": {"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}}


def paper_shaped(tokenizer: Any, draws: int = 4000, seed: int = 0, shared: Path = SHARED) -> dict[str, Any] | None:
    """Padding of padded batch-8 rows against token-budget batches at no more steps, on rows shaped like the
    paper's: 256 visual tokens per frame (4 frames, 1 for FER), the task template, the text of real MELD
    utterances (utterance tasks) or real ECF 2.0 conversations (ECPE, every turn with its speaker), a typical
    answer; packed rows of `PAPER_PACKED` tokens with and without the look-ahead. Planning only (no model runs:
    a 2,000-token row does not train in reasonable time on this CPU); None without `shared` (../shared/data)."""
    import csv

    import numpy as np

    from emoverse.amt.sources.ecf import read_ecf_json
    from emoverse.curriculum._plan import largest_remainder, rng
    from emoverse.curriculum.batching import plan_batches
    from emoverse.tasks import get_task

    meld, ecf = shared / "meld" / "train_sent_emo.csv", shared / "ecf" / "semeval2024_ecac" / "Subtask_1_train.json"
    if not (meld.exists() and ecf.exists()):
        return None

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    with open(meld, encoding="utf-8") as f:
        utterances = [n(row["Utterance"]) for row in csv.DictReader(f)]
    conversations = [sum(n(f"{t.speaker}: {t.text}\n") for t in c.turns) for c in read_ecf_json(ecf)]
    gen = np.random.default_rng(seed)
    out: dict[str, Any] = {"source": "MELD train utterances + ECF 2.0 Subtask 1 train conversations"}
    for stage, ratios in PAPER_STAGES.items():
        names = sorted(ratios)
        quotas = largest_remainder(draws, [ratios[t] for t in names])
        lengths, task_ids = [], np.repeat(np.arange(len(names)), quotas)
        for task, q in zip(names, quotas.tolist()):
            text = conversations if task == "ecpe" else utterances
            template = n(get_task(task).template)
            picks = gen.choice(text, size=q)
            lengths.append(FRAMES[task] * VISUAL_PER_FRAME + template + picks + RESPONSE[task])
        order = gen.permutation(draws)
        lengths, task_ids = np.concatenate(lengths)[order], task_ids[order]
        padded = sum(int(lengths[i:i + BATCH].max()) * len(lengths[i:i + BATCH]) for i in range(0, draws, BATCH))
        steps = -(-draws // BATCH)
        lo, hi = 256, 1 << 17
        while hi - lo > 16:  # the smallest budget with no more batches than the padded epoch
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if len(plan_batches(lengths, TokenBudget(mid), rng(seed, 1))) <= steps else (mid, hi)
        batches = plan_batches(lengths, TokenBudget(hi), rng(seed, 1))
        budget_positions = sum(int(lengths[b].max()) * len(b) for b in batches)
        real = int(lengths.sum())
        out[stage] = {"draws": draws, "rows_min": int(lengths.min()), "rows_median": int(np.median(lengths)),
                      "rows_max": int(lengths.max()), "padded_padding": round(1 - real / padded, 4),
                      "token_budget_max_tokens": hi, "token_budget_padding": round(1 - real / budget_positions, 4),
                      "steps_padded": steps, "steps_token_budget": len(batches),
                      "positions_ratio_padded_vs_packing": round(padded / real, 3)}
        for name, lookahead in (("in_order", 0), ("lookahead", TokenBudget(PAPER_PACKED).lookahead)):
            rows = plan_batches(lengths, TokenBudget(PAPER_PACKED, True, lookahead=lookahead), rng(seed, 1), task_ids)
            out[stage][f"packed_{name}"] = {"steps": len(rows), "fill": round(real / (len(rows) * PAPER_PACKED), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=["tiny", "tiny_llava"])
    parser.add_argument("--shared-data", type=Path, default=SHARED,
                        help="the real annotation data of the paper-shaped rows (default ../shared/data; skipped if absent)")
    args = parser.parse_args()
    results: dict[str, Any] = {"samples": args.samples, "rounds": args.rounds, "batch_size": BATCH,
                               "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        make_demo_amt(tmp, seed=0)
        for name in args.backbones:
            r = run(name, Path(tmp), args.samples, args.rounds)
            results[name] = r
            for mode in MODES:
                f = r[mode]
                fill = f" fill {100 * f['fill']:5.1f} %" if "fill" in f else ""
                print(f"{name:>10} {mode:>16}: {f['samples_per_s']:7.2f} samples/s {f['tokens_per_s']:9.1f} tokens/s "
                      f"padding {100 * f['padding']:5.1f} %{fill}  {f['steps']} steps, {f['samples']} samples, "
                      f"{f['seconds']} s (median epoch {f['median_epoch_seconds']} s)")
            print(f"{name:>10} token_budget {r['ratio_token_budget_vs_padded']}x, packing in order "
                  f"{r['ratio_packing_in_order_vs_padded']}x, packing {r['ratio_packing_vs_padded']}x the padded samples/s "
                  f"(max_tokens {r['max_tokens_token_budget']} / {r['max_tokens_packing']}); the look-ahead "
                  f"{r['ratio_packing_vs_packing_in_order']}x packing in order")
        q = results["quickstart"] = quickstart_rows(Path(tmp))
        for name in ("in_order", "lookahead"):
            f = q[name]
            print(f"quickstart packed rows ({q['max_tokens']} tokens), {name:>9}: fill {100 * f['fill']:.1f} % "
                  f"(per epoch {', '.join(f'{100 * x:.1f}' for x in f['fill_per_epoch'])}), {f['steps']} steps, "
                  f"row task-mix distance {f['mix_distance']:.3f}")
        paper = paper_shaped(module("tiny").processor.tokenizer, shared=args.shared_data)
        if paper is not None:
            results["paper_shaped"] = paper
            for stage in PAPER_STAGES:
                f = paper[stage]
                print(f"paper-shaped {stage}: rows {f['rows_min']}-{f['rows_max']} (median {f['rows_median']}), padding "
                      f"{100 * f['padded_padding']:.1f} % padded batch {BATCH} -> {100 * f['token_budget_padding']:.1f} % "
                      f"token-budget ({f['token_budget_max_tokens']} tokens, {f['steps_token_budget']} vs "
                      f"{f['steps_padded']} steps), 0 % packed; packed rows of {PAPER_PACKED} tokens "
                      f"{100 * f['packed_in_order']['fill']:.1f} % full in order ({f['packed_in_order']['steps']} steps), "
                      f"{100 * f['packed_lookahead']['fill']:.1f} % with the look-ahead ({f['packed_lookahead']['steps']} steps)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
