"""Each prompt once against each prompt G times: a GRPO step and rollout answers/s with shared prompts (each prompt
prefilled once and its G answers sampled from copies of the cache, `Backbone.sample_groups`; the answers scored in
one shared-prompt row per group, `objectives.shared_rows`) against repeated prompts (G copies of each prompt through
sampling, the reference and the policy pass), at G = 4 and 8 on `tiny` and `tiny_llava`.

The quickstart's GRPO prompts (examples/configs/quickstart_grpo.yaml): the demo AMT, MER and MSA drawn 1:1, 16 prompts
a step, 4 frames, answers of at most 4 tokens. Both modes sample the same answers from the same seed (checked), and
their losses are compared (`loss_rel_diff`). A step: sampling, rewards, reference and policy passes, backward, AdamW.

    python benchmarks/grpo.py [--backbones tiny tiny_llava] [--groups 4 8] [--prompts 16] [--steps 3] [--device cpu]

The last line is JSON: per backbone and G the medians and the ratios repeated / shared.
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
from emoverse.objectives import GRPO
from emoverse.objectives.grpo import grpo_step
from emoverse.objectives.sampling import answer_inputs, sample_answers, token_logprobs
from emoverse.objectives.shared_rows import shared_logprobs, shared_rows, sharing_unsupported

TOKENS = {"mer": 4, "msa": 4}
"""The quickstart GRPO stage's answer budgets."""


def timed(fns: dict, steps: int, device: str) -> dict:
    """Median seconds of each `fns[key]()` over `steps` runs (after one warm-up run each), the modes interleaved run by
    run, so that load from other processes falls on both alike."""
    for fn in fns.values():
        fn()
    times: dict = {key: [] for key in fns}
    for _ in range(steps):
        for key, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t)
    return {key: statistics.median(v) for key, v in times.items()}


def measure(root: Path, backbone: str, group: int, prompts: int, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    objective = GRPO(group_size=group, max_new_tokens=dict(TOKENS))
    stage = Stage(name="reinforce", ratios={"mer": 1, "msa": 1}, objective=objective)
    module = EmoVerseModule(backbone, lora_dropout=0.0, lr=1e-4, curriculum=Curriculum([stage])).to(device)
    data = AMTDataModule(str(root), batch_size=prompts, num_frames=4, processor=module.processor,
                         tasks=module.tasks, curriculum=module.curriculum)
    data.setup("fit")
    batch = next(iter(data.train_dataloader())).to(torch.device(device))
    bb = module.backbone
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()
    shared_why = {"scoring": sharing_unsupported(bb), "sampling": bb.group_sampling_unsupported()}

    def step(share: bool) -> torch.Tensor:
        objective.share_prompts = share
        loss = grpo_step(bb, batch, module.tasks, objective)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def loss_only(share: bool) -> tuple[float, list[list[int]]]:
        objective.share_prompts = share
        torch.manual_seed(1)
        out = grpo_step(bb, batch, module.tasks, objective)
        return float(out["loss"].detach()), out["samples"].answers

    # equality first, before any optimizer step moves the weights
    (l_shared, a_shared), (l_rep, a_rep) = loss_only(True), loss_only(False)
    with torch.no_grad():  # the answers' summed log-probabilities both ways (the loss is 0 when a group's rewards tie)
        rows = shared_rows(bb, batch.once, [a_rep[g:g + group] for g in range(0, len(a_rep), group)])
        got = shared_logprobs(bb, rows)[0].sum(1)
        want = token_logprobs(bb, *answer_inputs(bb, batch.inputs, a_rep))[0].sum(1)
    logp_diff = float(((got - want).abs() / want.abs().clamp(min=1e-12)).max())
    t_step = timed({m: lambda m=m: step(m) for m in (True, False)}, steps, device)

    def rollout(share: bool) -> None:
        sample_answers(bb, batch, module.tasks, Sampling(1.0, 1.0), TOKENS, share=share)

    t_roll = timed({m: lambda m=m: rollout(m) for m in (True, False)}, steps, device)
    answers = len(batch)
    return {"backbone": backbone, "group": group, "prompts": prompts,
            "prompt_tokens_mean": round(float(batch.once["attention_mask"].sum(1).float().mean()), 1),
            "same_answers": a_shared == a_rep, "loss_shared": l_shared, "loss_repeated": l_rep,
            "loss_rel_diff": abs(l_shared - l_rep) / max(abs(l_rep), 1e-12), "logp_max_rel_diff": logp_diff,
            "step_shared_s": round(t_step[True], 3), "step_repeated_s": round(t_step[False], 3),
            "step_ratio": round(t_step[False] / t_step[True], 2),
            "rollout_answers_per_s_shared": round(answers / t_roll[True], 1),
            "rollout_answers_per_s_repeated": round(answers / t_roll[False], 1),
            "rollout_ratio": round(t_roll[False] / t_roll[True], 2), "cannot_share": shared_why}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "tiny_llava"])
    parser.add_argument("--groups", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (the quickstart's batch_size)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp()) / "amt"
    make_demo_amt(root, seed=0)
    results = []
    for backbone in args.backbones:
        for group in args.groups:
            r = measure(root, backbone, group, args.prompts, args.steps, args.device)
            results.append(r)
            print(f"{backbone} G={group}: step {r['step_repeated_s']:.3f} s repeated -> {r['step_shared_s']:.3f} s "
                  f"shared ({r['step_ratio']}x); rollouts {r['rollout_answers_per_s_repeated']} -> "
                  f"{r['rollout_answers_per_s_shared']} answers/s ({r['rollout_ratio']}x); same answers "
                  f"{r['same_answers']}, loss rel diff {r['loss_rel_diff']:.1e}, answer log-prob rel diff "
                  f"{r['logp_max_rel_diff']:.1e}", flush=True)
    ratios = {f"{r['backbone']}_G{r['group']}": {"step": r["step_ratio"], "rollout": r["rollout_ratio"]}
              for r in results}
    print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "steps": args.steps,
                      "results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
