"""`Preference`: DPO on pairs the model makes itself, ranked by the tasks' own verifiers (`objective: preference`).

Direct Preference Optimization (Rafailov et al., "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model", NeurIPS 2023, eq. 7):

    L_DPO(π_θ; π_ref) = -E_(x, y_w, y_l) [ log σ( β log π_θ(y_w | x) / π_ref(y_w | x) - β log π_θ(y_l | x) / π_ref(y_l | x) ) ]

where log π(y | x) is the sum of the answer's token log-probabilities. The pairs need no human labels
and no judge model: for each prompt x the policy samples a group of G answers, each is scored by its
task's reward (`Task.reward`: the answer parses and is right by the task's own metric, less any length
penalty), and the best is chosen (y_w), the worst rejected (y_l); a group whose rewards are all equal
holds no preference and is skipped (counted in `train/preference/skipped`). With `gold_chosen` the
chosen answer is the gold one (the task's `response`) and the rejected the worst sample, skipped when
that sample earns the gold answer's reward.

Choices, each stated where it is made: the reference π_ref is the model with its LoRA adapters disabled
or the stage's starting weights (`Reference`, as GRPO's); dropout is off for the step (the scored policy
is the sampling one); log-probabilities are of the untempered policy (the temperature only widens the
sampled candidates); ties go to the first answer of the group (deterministic, so a resumed run picks the
same pairs). Logged: the implicit rewards r̂ = β log π_θ(y | x) / π_ref(y | x) of the chosen and the
rejected answers, their margin, the implicit-reward accuracy (share of pairs with r̂_w > r̂_l) and the
task rewards of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from emoverse.backbones.base import Backbone, Sampling
from emoverse.data.batches import GroupBatch
from emoverse.objectives.base import register_objective
from emoverse.objectives.group import GroupObjective, check_positive
from emoverse.objectives.sampling import (
    ReferenceKind,
    Samples,
    answer_inputs,
    log_task_rewards,
    no_dropout,
    reference_policy,
    sample_answers,
    token_logprobs,
)
from emoverse.objectives.shared_rows import shared_logprobs, shared_rows, sharing_unsupported

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from emoverse.tasks.base import Task

GOLD = -1
"""`Pair.chosen` of a pair whose chosen answer is the gold one."""


@dataclass(frozen=True)
class Pair:
    """One group's preference pair: rows (in the group batch) of the chosen and the rejected answer
    (`chosen == GOLD`: the gold answer), their task rewards, and whether the group holds a preference."""

    chosen: int
    rejected: int
    chosen_reward: float
    rejected_reward: float
    valid: bool


def preference_pairs(rewards: Sequence[float], group_size: int,
                     gold_rewards: Sequence[float] | None = None) -> list[Pair]:
    """One pair per group of `group_size` consecutive answers: the best chosen, the worst rejected (the first
    of equals); a group whose best and worst are equal is not `valid` (no preference, skipped).

    Args:
        rewards: `[N]` task rewards, `N = prompts x group_size`, each prompt's answers consecutive.
        group_size: G (>= 2).
        gold_rewards: per prompt, the reward of its gold answer: then the gold answer is chosen and the worst
            sample rejected, valid when the gold answer earns more.
    """
    if group_size < 2 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards are not groups of {group_size} >= 2")
    pairs = []
    for g in range(len(rewards) // group_size):
        rows = range(g * group_size, (g + 1) * group_size)
        worst = min(rows, key=lambda k: rewards[k])
        if gold_rewards is None:
            best = max(rows, key=lambda k: rewards[k])
            pairs.append(Pair(best, worst, rewards[best], rewards[worst], rewards[best] > rewards[worst]))
        else:
            pairs.append(Pair(GOLD, worst, gold_rewards[g], rewards[worst], gold_rewards[g] > rewards[worst]))
    return pairs


def dpo_loss(chosen_logp: Tensor, rejected_logp: Tensor, ref_chosen_logp: Tensor, ref_rejected_logp: Tensor,
             beta: float, valid: Tensor) -> dict[str, Tensor]:
    """L_DPO (Rafailov et al. 2023, eq. 7) over a batch of pairs, and the implicit rewards.

    Args:
        chosen_logp, rejected_logp: `[P]` log π_θ(y | x) of each pair's answers (summed over their tokens).
        ref_chosen_logp, ref_rejected_logp: `[P]` the same under π_ref.
        beta: β, the strength of the implicit KL constraint to π_ref.
        valid: `[P]` pairs that count (a skipped group's pair is in the graph with weight 0).

    Returns:
        `loss` (the mean over valid pairs of -log σ(r̂_w - r̂_l); 0 without any), `chosen_rewards` and
        `rejected_rewards` (`[P]` implicit rewards r̂ = β (log π_θ - log π_ref), detached), and over valid pairs
        `margin` (mean r̂_w - r̂_l) and `accuracy` (share with r̂_w > r̂_l).
    """
    chosen = beta * (chosen_logp - ref_chosen_logp)
    rejected = beta * (rejected_logp - ref_rejected_logp)
    weight = valid.to(chosen.dtype)
    n = weight.sum().clamp(min=1)
    losses = -F.logsigmoid(chosen - rejected)
    margin = (chosen - rejected).detach()
    return {"loss": (losses * weight).sum() / n, "chosen_rewards": chosen.detach(), "rejected_rewards": rejected.detach(),
            "margin": (margin * weight).sum() / n, "accuracy": ((margin > 0).to(weight.dtype) * weight).sum() / n}


@register_objective
class Preference(GroupObjective):
    """DPO on preference pairs built online from the model's own answers, ranked by `Task.reward`.

    In YAML: `objective: {class_path: emoverse.objectives.Preference, init_args: {group_size: 4, beta: 0.1}}`
    (or `objective: preference` for the defaults). Its train loader collates `GroupBatch`es (`batch_size`
    prompts, each `group_size` times), never token-budget batches.

    Args:
        group_size: G, answers sampled per prompt to rank (>= 2).
        beta: β of DPO (> 0; Rafailov et al. use 0.1 to 0.5).
        temperature: sampling temperature of the candidates (> 0).
        top_p: nucleus sampling mass of the candidates, in (0, 1].
        max_new_tokens: per task, the most tokens a sampled answer may have (default: the task's own).
        reference: "base" = the model with its LoRA adapters disabled; "stage_start" = the model as the stage
            began, from a frozen copy of the weights the stage trains, kept in checkpoints (`Reference`).
        gold_chosen: choose the gold answer (the task's `response`) instead of the best sample.
        share_prompts: sample each group from its prompt prefilled once (`Backbone.sample_groups`) and score each
            pair in one shared-prompt row `[prompt; chosen; rejected]` (`objectives.shared_rows`: the prompt and its
            media encoded once, equal log-probabilities); False, or a backbone that cannot share (it says why at
            setup), scores `[prompt; chosen]` and `[prompt; rejected]` rows.
    """

    name = "preference"
    group_reason = "the best and the worst of each prompt's sampled answers make its pair"

    def __init__(self, group_size: int = 4, beta: float = 0.1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: dict[str, int] | None = None, reference: ReferenceKind = "base",
                 gold_chosen: bool = False, share_prompts: bool = True) -> None:
        super().__init__(group_size, temperature, top_p, max_new_tokens, reference, share_prompts)
        check_positive("Preference", "beta", beta)
        if not isinstance(gold_chosen, bool):
            raise ValueError(f"Preference: gold_chosen={gold_chosen!r}, expected true or false")
        self.beta, self.gold_chosen = float(beta), gold_chosen

    def training_step(self, module: LightningModule, batch: GroupBatch, stage: int) -> Tensor:
        if not isinstance(batch, GroupBatch):
            raise TypeError(f"Preference trains on GroupBatch (Preference.collator), got {type(batch).__name__}")
        out = self.step(module.backbone, batch, module.tasks, lambda: self.reference_policy(module, stage))
        log_preference(module, batch, out)
        return out["loss"]

    def step(self, backbone: Backbone, batch: GroupBatch, tasks: Mapping[str, Task],
             reference: Any = None) -> dict[str, Any]:
        """Sample G answers per prompt, rank them by reward into pairs (`make_pairs`), score the pairs (`score`).

        Args:
            reference: a callable giving a context in which the backbone is the reference policy (default:
                its LoRA adapters disabled).

        Returns:
            `dpo_loss`'s values, `pairs` (`Pair` per prompt) and `samples` (`Samples`, per row).
        """
        pairs, answers, samples = self.make_pairs(backbone, batch, tasks)
        return {**self.score(backbone, batch, pairs, answers, reference), "pairs": pairs, "samples": samples}

    def make_pairs(self, backbone: Backbone, batch: GroupBatch, tasks: Mapping[str, Task]
                   ) -> tuple[list[Pair], list[list[int]], Samples]:
        """Sample and reward G answers per prompt and pair the best (or the gold answer) with the worst.

        Returns:
            the `Pair` of each prompt, the answer tokens each row of `batch` is scored with (a group's first row
            its chosen answer, its second the rejected one, the others none: a group's rows share one prompt, so
            any backbone's inputs stay as collated), and the `Samples`.
        """
        if batch.group_size != self.group_size:
            raise ValueError(f"batch has groups of {batch.group_size} answers but Preference.group_size is "
                             f"{self.group_size}")
        samples = sample_answers(backbone, batch, tasks, Sampling(self.temperature, self.top_p), self.max_new_tokens,
                                 share=self.share_prompts)
        firsts = range(0, len(batch), self.group_size)
        gold_tokens, gold_rewards = [], None
        if self.gold_chosen:
            proc = backbone.processor
            gold_tokens = [proc.tokenize(batch.responses[k]) + proc.end_ids for k in firsts]
            gold_rewards = [tasks[batch.tasks[k]].reward(batch.responses[k], batch.records[k]) for k in firsts]
        pairs = preference_pairs(samples.rewards, self.group_size, gold_rewards)
        answers: list[list[int]] = [[] for _ in range(len(batch))]
        for p, (k, pair) in enumerate(zip(firsts, pairs, strict=True)):
            answers[k] = gold_tokens[p] if pair.chosen == GOLD else samples.answers[pair.chosen]
            answers[k + 1] = samples.answers[pair.rejected]
        return pairs, answers, samples

    def score(self, backbone: Backbone, batch: GroupBatch, pairs: Sequence[Pair], answers: list[list[int]],
              reference: Any = None) -> dict[str, Tensor]:
        """`dpo_loss` of the pairs, from the log-probabilities of `answers` (laid out by `make_pairs`) under the
        policy (with gradient) and the reference (first, so nothing the policy's backward needs is touched)."""
        firsts = range(0, len(batch), self.group_size)
        if self.share_prompts and batch.once is not None and sharing_unsupported(backbone) is None:
            rows = shared_rows(backbone, batch.once, [[answers[k], answers[k + 1]] for k in firsts])
            chosen = list(range(0, 2 * len(firsts), 2))  # the shared rows' answers: chosen, rejected per prompt

            def score() -> tuple[Tensor, Tensor]:
                return shared_logprobs(backbone, rows)
        else:
            inputs, labels = answer_inputs(backbone, batch.inputs, answers)
            chosen = list(firsts)

            def score() -> tuple[Tensor, Tensor]:
                return token_logprobs(backbone, inputs, labels)
        with no_dropout(backbone):
            as_reference = reference() if reference is not None else reference_policy(backbone)
            with torch.no_grad(), as_reference:
                ref_logp, _ = score()
            logp, _ = score()
        seq, ref_seq = logp.sum(1), ref_logp.sum(1)  # masked positions hold 0
        rejected = [k + 1 for k in chosen]
        valid = torch.tensor([p.valid for p in pairs], device=seq.device)
        return dpo_loss(seq[chosen], seq[rejected], ref_seq[chosen], ref_seq[rejected], self.beta, valid)


def log_preference(module: LightningModule, batch: GroupBatch, out: Mapping[str, Any]) -> None:
    """Log a preference step: `train/loss`; `train/preference/{pairs, skipped}` (groups with and without a
    preference); over the pairs `train/preference/{reward_margin, chosen_reward, rejected_reward, accuracy}`
    (implicit rewards) and `{chosen_task_reward, rejected_task_reward}`; per task `train/{task}/reward` and
    each reward term (`train/{task}/reward/{term}`) over every sampled answer."""
    pairs: list[Pair] = out["pairs"]
    samples: Samples = out["samples"]
    kept = [p for p in pairs if p.valid]
    prompts, device = batch.prompts, module.device
    module.log("train/loss", out["loss"].detach(), prog_bar=True, batch_size=prompts)

    def log(key: str, value: float | Tensor, **kw: Any) -> None:
        module.log(f"train/preference/{key}", torch.as_tensor(value).to(device, torch.float32), batch_size=prompts, **kw)

    log("pairs", float(len(kept)), reduce_fx="sum")
    log("skipped", float(len(pairs) - len(kept)), reduce_fx="sum")
    log("reward", sum(samples.rewards) / len(samples.rewards))
    if kept:  # the implicit-reward statistics exist only where some group held a preference
        valid = torch.tensor([p.valid for p in pairs])
        log("reward_margin", out["margin"])
        log("accuracy", out["accuracy"], prog_bar=True)
        log("chosen_reward", out["chosen_rewards"].cpu()[valid].mean())
        log("rejected_reward", out["rejected_rewards"].cpu()[valid].mean())
        log("chosen_task_reward", sum(p.chosen_reward for p in kept) / len(kept))
        log("rejected_task_reward", sum(p.rejected_reward for p in kept) / len(kept))
    log_task_rewards(module, batch.tasks, samples, batch.group_size)
