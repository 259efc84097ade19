"""`GRPO`: the reinforcement objective of a stage, with the tasks' own rewards (`objective: grpo`).

Group Relative Policy Optimization (Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical
Reasoning in Open Language Models", 2024, §4.1). For each prompt q the policy samples a group of G
answers o_1..o_G; each gets a reward r_i (`Task.reward`: the answer parses, and it is right by the
task's own metric). With outcome supervision every token of o_i has the advantage of its answer,
normalised within the group (§4.1.2):

    Â_{i,t} = (r_i - mean(r_1..r_G)) / std(r_1..r_G)

and the objective (eq. 3) is

    J(θ) = E[ 1/G Σ_i 1/|o_i| Σ_t { min( ρ_{i,t} Â_{i,t}, clip(ρ_{i,t}, 1 - ε, 1 + ε) Â_{i,t} ) - β D_KL[π_θ || π_ref] } ]

with the ratio ρ_{i,t} = π_θ(o_{i,t} | q, o_{i,<t}) / π_θ_old(o_{i,t} | q, o_{i,<t}) and the per-token KL
estimate of eq. 4 (unbiased, always >= 0):

    D_KL[π_θ || π_ref] = π_ref / π_θ - log(π_ref / π_θ) - 1.

emoverse minimises -J. Choices, each stated where it is made: one policy update per sampled batch
(DeepSeekMath's own setting, μ = 1, so π_θ_old is π_θ before the update: ρ = 1 in value, its gradient
∇ log π_θ); the std is the unbiased sample std plus 1e-4 (TRL's GRPOTrainer), so a group of equal
rewards has zero advantage; the reference π_ref is the same model with its LoRA adapters disabled
(peft's `disable_adapter()`, no second copy of the weights), or the stage's starting weights
(`reference="stage_start"`); dropout is off for the whole step, so the
answers are sampled from the policy that is scored; log-probabilities are of the tempered
distribution the answers were sampled from (logits / temperature).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

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
    sample_answers,
    token_logprobs,
)
from emoverse.objectives.shared_rows import shared_logprobs, shared_rows, sharing_unsupported

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from emoverse.tasks.base import Task

STD_EPS = 1e-4
"""Added to the group's reward std (TRL's GRPOTrainer does the same), so equal rewards give advantage 0."""


@register_objective
class GRPO(GroupObjective):
    """Group Relative Policy Optimization with the tasks' rewards (`Task.reward`), one policy update per batch.

    In YAML: `objective: {class_path: emoverse.objectives.GRPO, init_args: {group_size: 4, beta: 0.04}}`
    (or `objective: grpo` for the defaults). Its train loader collates `GroupBatch`es (`batch_size`
    prompts, each `group_size` times), never token-budget batches.

    Args:
        group_size: G, answers sampled per prompt; advantages are normalised within each prompt's group (>= 2).
        beta: weight of the KL penalty to the reference policy (DeepSeekMath: 0.04; >= 0, 0 turns it off).
        clip_eps: epsilon of the clipped policy ratio, clip(ratio, 1 - eps, 1 + eps) (> 0).
        temperature: sampling temperature (> 0); log-probabilities are of the same tempered distribution.
        top_p: nucleus sampling mass, in (0, 1]; 1 samples from the whole distribution.
        max_new_tokens: per task, the most tokens an answer may have (default: the task's own `max_new_tokens`).
        reference: the reference policy of the KL term: "base" = the same model with its LoRA adapters
            disabled; "stage_start" = the model as the stage began (after SFT), from a frozen copy of the
            weights the stage trains, kept in checkpoints (`Reference`).
        share_prompts: sample each group from its prompt prefilled once (`Backbone.sample_groups`) and score its
            answers in one shared-prompt row `[prompt; answer_1; ...; answer_G]`
            (`objectives.shared_rows`: the prompt and its media encoded once, equal log-probabilities); False, or a
            backbone that cannot share (it says why at setup), scores G repeated `[prompt; answer]` rows.
    """

    name = "grpo"
    group_reason = "advantages are normalised within each prompt's group of sampled answers"

    def __init__(self, group_size: int = 4, beta: float = 0.04, clip_eps: float = 0.2, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: dict[str, int] | None = None,
                 reference: ReferenceKind = "base", share_prompts: bool = True) -> None:
        super().__init__(group_size, temperature, top_p, max_new_tokens, reference, share_prompts)
        check_positive("GRPO", "beta", beta, zero=True)
        check_positive("GRPO", "clip_eps", clip_eps)
        self.beta, self.clip_eps = float(beta), float(clip_eps)

    def training_step(self, module: LightningModule, batch: GroupBatch, stage: int) -> Tensor:
        """Sample, reward and score a group batch (`grpo_step`), with this stage's reference; log it (`log_grpo`)."""
        if not isinstance(batch, GroupBatch):
            raise TypeError(f"GRPO trains on GroupBatch (GRPO.collator), got {type(batch).__name__}")
        out = grpo_step(module.backbone, batch, module.tasks, self, lambda: self.reference_policy(module, stage))
        log_grpo(module, batch, out)
        return out["loss"]


def group_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Â_i = (r_i - mean(group)) / (std(group) + 1e-4) for rewards laid out group by group (DeepSeekMath §4.1.2).

    Args:
        rewards: `[N]` rewards, `N = prompts x group_size`, the answers of one prompt consecutive.
        group_size: G.

    Returns:
        `[N]` advantages (the unbiased sample std of each group).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} are not groups of {group_size}")
    r = rewards.view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + STD_EPS)).view(-1)


def kl_estimate(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token D_KL[π_θ || π_ref] ≈ π_ref/π_θ - log(π_ref/π_θ) - 1 (DeepSeekMath eq. 4), from log-probabilities."""
    diff = ref_logp - logp
    return torch.expm1(diff) - diff  # = exp(diff) - diff - 1, without the cancellation near the reference


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor, advantages: Tensor, mask: Tensor,
              clip_eps: float, beta: float) -> dict[str, Tensor]:
    """-J_GRPO (DeepSeekMath eq. 3) over a batch of answers.

    Args:
        logp: `[N, T]` log π_θ of each answer token (with gradient).
        old_logp: `[N, T]` log π_θ_old of the same tokens (the sampling policy).
        ref_logp: `[N, T]` log π_ref.
        advantages: `[N]` per answer (`group_advantages`), shared by its tokens.
        mask: `[N, T]` 1 at answer tokens, 0 at padding.
        clip_eps: ε.
        beta: β.

    Returns:
        `loss` (-J: the mean over answers of each answer's token mean), `kl` (mean per answer token)
        and `clipped` (share of answer tokens whose ratio the clip bounds).
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype)[:, None]
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = kl_estimate(logp, ref_logp)
    per_answer = ((surrogate - beta * kl) * mask).sum(1) / mask.sum(1).clamp(min=1)
    tokens = mask.sum().clamp(min=1)
    clipped = ((ratio - ratio.clamp(1 - clip_eps, 1 + clip_eps)).abs() > 0).to(logp.dtype)
    return {"loss": -per_answer.mean(), "kl": (kl.detach() * mask).sum() / tokens,
            "clipped": (clipped * mask).sum() / tokens}


def grpo_step(backbone: Backbone, batch: GroupBatch, tasks: Mapping[str, Task], settings: GRPO,
              reference: Any = None) -> dict[str, Any]:
    """One GRPO step on a group batch: sample, reward, score, loss.

    Args:
        backbone: the policy (with LoRA).
        batch: prompt-only inputs, each prompt repeated `group_size` times in a row.
        tasks: task objects by name (their `reward`, `parse` and `max_new_tokens`).
        settings: the stage's `GRPO` objective.
        reference: a callable giving a context in which the backbone is the reference policy (default: its
            LoRA adapters disabled, `reference_policy`).

    Returns:
        `loss` (to backpropagate), `kl`, `clipped`, `advantages`, and `samples` (`Samples`: per answer its
        tokens, text, reward, reward terms and whether it parses).
    """
    from emoverse.objectives.sampling import reference_policy

    group = batch.group_size
    if group != settings.group_size:
        raise ValueError(f"batch has groups of {group} answers but the stage's GRPO.group_size is {settings.group_size}")
    samples = sample_answers(backbone, batch, tasks, Sampling(settings.temperature, settings.top_p),
                             settings.max_new_tokens, share=settings.share_prompts)
    device = batch.inputs["input_ids"].device
    advantages = group_advantages(torch.tensor(samples.rewards, dtype=torch.float32, device=device), group)
    if settings.share_prompts and batch.once is not None and sharing_unsupported(backbone) is None:
        rows = shared_rows(backbone, batch.once, [samples.answers[g:g + group]
                                                  for g in range(0, len(samples.answers), group)])

        def score() -> tuple[Tensor, Tensor]:
            return shared_logprobs(backbone, rows, settings.temperature)
    else:
        inputs, labels = answer_inputs(backbone, batch.inputs, samples.answers)

        def score() -> tuple[Tensor, Tensor]:
            return token_logprobs(backbone, inputs, labels, settings.temperature)
    with no_dropout(backbone):
        as_reference = reference() if reference is not None else reference_policy(backbone)
        with torch.no_grad(), as_reference:  # first: nothing the policy's backward needs is touched yet
            ref_logp, _ = score()
        logp, mask = score()
    out = grpo_loss(logp, logp.detach(), ref_logp, advantages, mask, settings.clip_eps, settings.beta)  # μ = 1
    return {**out, "advantages": advantages, "samples": samples}


def log_grpo(module: LightningModule, batch: GroupBatch, out: Mapping[str, Any]) -> None:
    """Log a GRPO step: `train/loss`, `train/grpo/{reward, reward_std, kl, answer_length, unparsed, clipped}`
    and per task `train/{task}/reward` and each reward term `train/{task}/reward/{term}` (the mean over the
    step's answers; reward_std: the mean std within groups)."""
    samples: Samples = out["samples"]
    rewards = torch.tensor(samples.rewards, dtype=torch.float64)
    group, prompts = batch.group_size, batch.prompts
    module.log("train/loss", out["loss"].detach(), prog_bar=True, batch_size=prompts)
    values = {
        "reward": rewards.mean(),
        "reward_std": rewards.view(-1, group).std(1).mean(),
        "kl": out["kl"],
        "answer_length": torch.tensor(samples.lengths, dtype=torch.float64).mean(),
        "unparsed": 1.0 - torch.tensor(samples.parsed, dtype=torch.float64).mean(),
        "clipped": out["clipped"],
    }
    device = module.device
    for key, value in values.items():
        module.log(f"train/grpo/{key}", torch.as_tensor(value).to(device, torch.float32), batch_size=prompts,
                   prog_bar=key == "reward")
    log_task_rewards(module, batch.tasks, samples, group)
