"""GRPO, the reinforcement objective of a `Stage(objective="grpo")`, with the tasks' own rewards.

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
(peft's `disable_adapter()`, no second copy of the weights); dropout is off for the whole step, so the
answers are sampled from the policy that is scored; log-probabilities are of the tempered
distribution the answers were sampled from (logits / temperature).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from emoverse.backbones.base import IGNORE_INDEX, Backbone, Sampling
from emoverse.curriculum.stage import GRPOSettings
from emoverse.tasks.base import Task

STD_EPS = 1e-4
"""Added to the group's reward std (TRL's GRPOTrainer does the same), so equal rewards give advantage 0."""


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


def token_logprobs(backbone: Backbone, inputs: Mapping[str, Tensor], labels: Tensor,
                   temperature: float) -> tuple[Tensor, Tensor]:
    """log π(answer token) at every labelled position: `[N, K]` log-probabilities and their `[N, K]` mask,
    over the K positions where some row has an answer token (the LM head runs only there)."""
    targets = labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    logits = backbone.logits(inputs, keep).float() / temperature
    targets = targets[:, keep]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def cut_answers(new_ids: Tensor, budgets: Sequence[int], stop_ids: Sequence[int]) -> list[list[int]]:
    """Each row's answer tokens: up to and including its first stop token, at most `budgets[i]` tokens."""
    stops = set(stop_ids)
    out = []
    for row, budget in zip(new_ids.tolist(), budgets, strict=True):
        row = row[:budget]
        end = next((k for k, t in enumerate(row) if t in stops), None)
        out.append(row if end is None else row[:end + 1])
    return out


@contextlib.contextmanager
def no_dropout(module: nn.Module) -> Iterator[None]:
    """Dropout layers in eval mode (the rest keeps its mode: gradient checkpointing stays on)."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def reference_policy(backbone: Backbone) -> contextlib.AbstractContextManager:
    """The reference π_ref: the same model with its LoRA adapters disabled (peft's `disable_adapter`)."""
    disable = getattr(backbone.model, "disable_adapter", None)
    if disable is None:
        raise ValueError(f"{type(backbone).__name__}.model has no LoRA adapters (no disable_adapter()), so there is "
                         "no reference policy; GRPO needs EmoVerseModule's LoRA")
    return disable()


@contextlib.contextmanager
def swapped_weights(module: nn.Module, weights: Mapping[str, Tensor]) -> Iterator[None]:
    """`module`'s parameters named in `weights` hold those values inside the block (copied in and back).

    The copies bump the parameters' versions: use it before a forward whose backward needs them."""
    params = dict(module.named_parameters())
    stash = {}
    with torch.no_grad():
        for name, value in weights.items():
            stash[name] = params[name].detach().clone()
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in stash.items():
                params[name].copy_(value)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A frozen copy of `module`'s trainable parameters (the stage-start reference of `swapped_weights`)."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def grpo_step(backbone: Backbone, batch: Mapping[str, Any], tasks: Mapping[str, Task],
              settings: GRPOSettings,
              reference: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict[str, Any]:
    """One GRPO step on a group batch (`emoverse.data.grpo.GroupCollator`): sample, reward, score, loss.

    Args:
        backbone: the policy (with LoRA).
        batch: prompt-only inputs, each prompt repeated `group_size` times in a row, with `tasks`,
            `records` and `group_size`.
        tasks: task objects by name (their `reward`, `parse` and `max_new_tokens`).
        settings: the stage's GRPO settings.
        reference: a context in which the backbone is the reference policy (default: its LoRA
            adapters disabled, `reference_policy`).

    Returns:
        `loss` (to backpropagate), `kl`, `clipped`, and per answer `rewards`, `parsed`, `lengths`,
        `texts` (lists, for logging).
    """
    group = int(batch["group_size"])
    if group != settings.group_size:
        raise ValueError(f"batch has groups of {group} answers but the stage's grpo.group_size is {settings.group_size}")
    names, records = batch["tasks"], batch["records"]
    limits = settings.max_new_tokens or {}
    budgets = [limits.get(t, tasks[t].max_new_tokens) for t in names]
    proc = backbone.processor
    with torch.no_grad(), eval_mode(backbone):
        new_ids = backbone.generate_ids(batch["inputs"], max(budgets), Sampling(settings.temperature, settings.top_p))
    answers = cut_answers(new_ids, budgets, proc.stop_ids)
    texts = [proc.tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    rewards = [tasks[t].reward(text, r) for t, text, r in zip(names, texts, records, strict=True)]
    parsed = [tasks[t].parse(text, r) is not None for t, text, r in zip(names, texts, records, strict=True)]
    device = batch["inputs"]["input_ids"].device
    advantages = group_advantages(torch.tensor(rewards, dtype=torch.float32, device=device), group)
    inputs, labels = answer_inputs(backbone, batch["inputs"], answers)
    with no_dropout(backbone):
        as_reference = reference() if reference is not None else reference_policy(backbone)
        with torch.no_grad(), as_reference:  # first: nothing the policy's backward needs is touched yet
            ref_logp, _ = token_logprobs(backbone, inputs, labels, settings.temperature)
        logp, mask = token_logprobs(backbone, inputs, labels, settings.temperature)
    out = grpo_loss(logp, logp.detach(), ref_logp, advantages, mask, settings.clip_eps, settings.beta)  # μ = 1
    return {**out, "rewards": rewards, "parsed": parsed, "lengths": [len(a) for a in answers], "texts": texts,
            "advantages": advantages}


def answer_inputs(backbone: Backbone, prompts: Mapping[str, Tensor], answers: list[list[int]]
                  ) -> tuple[dict[str, Tensor], Tensor]:
    """`[prompt; answer]` rows and their labels (the answer tokens), built by the processor as for a
    supervised batch (`BackboneProcessor._append_responses`: per-token inputs extended as generation
    extends them), on the prompts' device."""
    ids = prompts["input_ids"]
    device = ids.device
    # the processor builds the rows on the CPU; per-token inputs go there and back, pixel values stay
    host = {k: v.cpu() if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[:2] == ids.shape else v
            for k, v in prompts.items()}
    inputs, labels = backbone.processor._append_responses(host, answers)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}, labels.to(device)


def check_grpo_stages(stages: Sequence[Any], tasks: Mapping[str, Task], backbone: Backbone) -> None:
    """At start: every GRPO stage's tasks are the module's and have a reward, and the backbone can sample.

    Raises:
        ValueError: naming the stage, the field and what was expected.
    """
    for stage in stages:
        if stage.objective != "grpo":
            continue
        where = f"Stage {stage.name!r} (objective: grpo)"
        missing = [t for t in stage.tasks if t not in tasks]
        if missing:
            raise ValueError(f"{where}: ratios names task(s) {missing} the model does not have; model tasks: {list(tasks)}")
        no_reward = [t for t in stage.tasks if not tasks[t].has_reward]
        if no_reward:
            raise ValueError(f"{where}: ratios names task(s) {no_reward} without a reward; expected tasks that implement "
                             "Task.reward_terms (built in: msa, mer, fer, eri, ecpe)")
        if not backbone.can_sample:
            raise ValueError(f"{where}: backbone {type(backbone).__name__} cannot generate (its model has no generate); "
                             "expected a backbone whose generate_ids samples")
        if getattr(backbone.model, "disable_adapter", None) is None:
            raise ValueError(f"{where}: the backbone has no LoRA adapters, so no reference policy (the model with its "
                             "adapters disabled); expected EmoVerseModule's LoRA")


def log_grpo(module: Any, batch: Mapping[str, Any], out: Mapping[str, Any]) -> None:
    """Log a GRPO step: `train/loss`, `train/grpo/{reward, reward_std, kl, answer_length, unparsed, clipped}`
    and `train/{task}/reward` (the mean over the step's answers; reward_std: the mean std within groups)."""
    rewards = torch.tensor(out["rewards"], dtype=torch.float64)
    n, group = len(rewards), int(batch["group_size"])
    prompts = n // group
    module.log("train/loss", out["loss"].detach(), prog_bar=True, batch_size=prompts)
    values = {
        "reward": rewards.mean(),
        "reward_std": rewards.view(-1, group).std(1).mean(),
        "kl": out["kl"],
        "answer_length": torch.tensor(out["lengths"], dtype=torch.float64).mean(),
        "unparsed": 1.0 - torch.tensor(out["parsed"], dtype=torch.float64).mean(),
        "clipped": out["clipped"],
    }
    device = module.device
    for key, value in values.items():
        module.log(f"train/grpo/{key}", torch.as_tensor(value).to(device, torch.float32), batch_size=prompts,
                   prog_bar=key == "reward")
    names = batch["tasks"]
    for task in sorted(set(names)):
        mine = torch.tensor([t == task for t in names])
        module.log(f"train/{task}/reward", rewards[mine].mean().to(device, torch.float32),
                   batch_size=max(int(mine.sum()) // group, 1))
