"""Does a GRPO stage raise the reward on held-out prompts? The mean `Task.reward` of greedy answers to the
demo AMT's validation pairs, before and after a seeded GRPO stage that starts from a supervised checkpoint
(e.g. the end of the quickstart's two stages: `runs/.../checkpoints/epoch=5-step=231.ckpt`).

The GRPO stage runs as its own `Trainer.fit` (one stage, its own warm-up + cosine over its steps), so
its lr is the stage's and not the tail of a longer run's cosine.

    python benchmarks/grpo_reward.py CKPT [--amt data/demo_amt] [--tasks mer msa] [--steps 24] [--lr 1e-3] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics

import lightning.pytorch as pl
import torch

from emoverse import AMTDataModule, EmoVerseModule, Stage
from emoverse.backbones.base import Sampling
from emoverse.curriculum import Curriculum, MultiStageCurriculum
from emoverse.evaluation import answer
from emoverse.objectives import GRPO
from emoverse.objectives.sampling import cut_answers


def val_reward(module: EmoVerseModule, data: AMTDataModule, tasks: list[str]) -> dict[str, float]:
    """Mean reward per task of greedy answers on the validation pairs (capped by `max_eval_per_task`)."""
    module.eval()
    rewards: dict[str, list[float]] = {t: [] for t in tasks}
    with torch.no_grad():
        for batch in data.val_dataloader():
            for row in answer(module.backbone, batch.to(module.device), module.tasks):
                if row["task"] in rewards:
                    rewards[row["task"]].append(module.tasks[row["task"]].reward(row["generation"], row["record"]))
    return {t: statistics.fmean(v) for t, v in rewards.items() if v}


def sampled_val_reward(module: EmoVerseModule, data: AMTDataModule, tasks: list[str], samples: int, tokens: int,
                       seed: int) -> dict[str, float]:
    """Mean reward per task of `samples` answers sampled at temperature 1 (the policy GRPO trains) per
    validation prompt, from a fixed seed."""
    module.eval()
    torch.manual_seed(seed)
    proc = module.processor
    rewards: dict[str, list[float]] = {t: [] for t in tasks}
    with torch.no_grad():
        for batch in data.val_dataloader():
            batch = batch.to(module.device)
            for _ in range(samples):
                new = module.backbone.generate_ids(batch.inputs, tokens, Sampling(1.0, 1.0))
                for ids, t, r in zip(cut_answers(new, [tokens] * len(new), proc.stop_ids), batch.tasks,
                                     batch.records, strict=True):
                    if t in rewards:
                        text = proc.tokenizer.decode(ids, skip_special_tokens=True).strip()
                        rewards[t].append(module.tasks[t].reward(text, r))
    return {t: statistics.fmean(v) for t, v in rewards.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--amt", default="data/demo_amt")
    parser.add_argument("--tasks", nargs="+", default=["mer", "msa"])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=4, help="max new tokens per answer")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pl.seed_everything(args.seed)
    stage = Stage(name="reinforce", ratios={t: 1 for t in args.tasks}, budget="all", epochs=1,
                  samples_per_epoch=args.steps * args.prompts, train=["lora"],
                  objective=GRPO(group_size=args.group, beta=args.beta, reference="stage_start",
                                 max_new_tokens={t: args.tokens for t in args.tasks}))
    curriculum = Curriculum([stage], seed=args.seed)
    module = EmoVerseModule.load_from_checkpoint(args.ckpt, curriculum=curriculum, lr=args.lr, warmup_ratio=0.1,
                                                 trainable=["lora"])
    data = AMTDataModule(args.amt, batch_size=args.prompts, eval_batch_size=32, max_eval_per_task=32, seed=0,
                         processor=module.processor, tasks={t: module.tasks[t] for t in args.tasks},
                         curriculum=curriculum)
    data.setup("fit")
    before = val_reward(module, data, args.tasks)
    sampled_before = sampled_val_reward(module, data, args.tasks, args.group, args.tokens, args.seed + 1)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[MultiStageCurriculum(curriculum)])
    module.train()
    trainer.fit(module, datamodule=data)
    after = val_reward(module, data, args.tasks)
    sampled_after = sampled_val_reward(module, data, args.tasks, args.group, args.tokens, args.seed + 1)
    print(f"seed {args.seed}, {args.steps} GRPO steps of {args.prompts} prompts x G={args.group}, lr {args.lr}, "
          f"beta {args.beta}, from {args.ckpt}")
    for t in args.tasks:
        print(f"  val {t}: greedy answers' mean reward {before[t]:.3f} -> {after[t]:.3f}; "
              f"sampled (T=1, {args.group} per prompt) {sampled_before[t]:.3f} -> {sampled_after[t]:.3f}")
    print(f"  val mean over tasks: greedy {statistics.fmean(before.values()):.3f} -> {statistics.fmean(after.values()):.3f}; "
          f"sampled {statistics.fmean(sampled_before.values()):.3f} -> {statistics.fmean(sampled_after.values()):.3f}")


if __name__ == "__main__":
    main()
