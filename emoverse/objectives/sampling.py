"""What objectives that learn from the model's own answers share: group batches, sampling and rewarding
answers, their log-probabilities, and the reference policy (the model with LoRA disabled, or the
stage's starting weights)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from emoverse.backbones.base import IGNORE_INDEX, Backbone, BackboneProcessor, Sampling
from emoverse.data.batches import Example, GroupBatch
from emoverse.data.collator import AMTCollator

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from emoverse.curriculum.stage import Stage
    from emoverse.tasks.base import Task

ReferenceKind = Literal["base", "stage_start"]


class GroupCollator:
    """A `GroupBatch`: a generation batch (`AMTCollator` mode "generate": left-padded prompts, `queries`,
    `records`) with every example repeated `group_size` times in a row, so one batched generation samples
    each prompt's group of answers.

    It also encodes each prompt once (`GroupBatch.once`), for the shared-prompt rows that score the answers.
    It collates the same (record, task) draws as any stage, so the train loader's state (draws delivered) is
    the position as for any stage. Each copy is encoded, so any backbone's multimodal inputs (pixel values
    laid out per frame, grid sizes) repeat correctly.

    Args:
        processor: the backbone's processor.
        group_size: G, answers sampled per prompt (>= 2).
        system_prompt: optional system message.
    """

    def __init__(self, processor: BackboneProcessor, group_size: int, system_prompt: str | None = None) -> None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"GroupCollator: group_size={group_size!r}; expected an int >= 2")
        self.group_size = group_size
        self.inner = AMTCollator(processor, "generate", system_prompt)

    def __call__(self, examples: Sequence[Example]) -> GroupBatch:
        b = self.inner([ex for ex in examples for _ in range(self.group_size)])
        once = self.inner(list(examples)).inputs
        return GroupBatch(b.inputs, b.tasks, b.ids, b.queries, b.records, b.num_truncated, b.responses,
                          group_size=self.group_size, once=once)


@dataclass
class Samples:
    """Answers sampled for a group batch and what the tasks make of them (one entry per row).

    Attributes:
        answers: token ids of each answer (up to and including its stop token).
        texts: the decoded answers.
        rewards: `Task.reward` of each answer.
        terms: the weighted reward terms of each answer (`Task.reward_breakdown`), summing to its reward.
        parsed: whether each answer parses.
    """

    answers: list[list[int]]
    texts: list[str]
    rewards: list[float]
    terms: list[dict[str, float]]
    parsed: list[bool]

    @property
    def lengths(self) -> list[int]:
        return [len(a) for a in self.answers]


def sample_answers(backbone: Backbone, batch: GroupBatch, tasks: Mapping[str, Task], sampling: Sampling,
                   max_new_tokens: Mapping[str, int] | None = None, share: bool = True) -> Samples:
    """Sample one answer per row of `batch` (in eval mode, without gradients) and reward each with its task.

    Args:
        max_new_tokens: per task, the most tokens an answer may have (default: the task's `max_new_tokens`).
        share: prefill each distinct prompt once and sample its group from copies of that cache
            (`Backbone.sample_groups`: the same answers as from the repeated prompts, same seed); False, or a
            backbone that cannot (`group_sampling_unsupported`), generates from the repeated prompts.
    """
    limits = max_new_tokens or {}
    budgets = [limits.get(t, tasks[t].max_new_tokens) for t in batch.tasks]
    proc = backbone.processor
    with torch.no_grad(), eval_mode(backbone):
        if share and batch.once is not None and backbone.group_sampling_unsupported() is None:
            new_ids = backbone.sample_groups(batch.once, batch.group_size, max(budgets), sampling)
        else:
            new_ids = backbone.generate_ids(batch.inputs, max(budgets), sampling)
    answers = cut_answers(new_ids, budgets, proc.stop_ids)
    texts = [proc.tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    terms = [tasks[t].reward_breakdown(text, r) for t, text, r in zip(batch.tasks, texts, batch.records, strict=True)]
    parsed = [tasks[t].parse(text, r) is not None for t, text, r in zip(batch.tasks, texts, batch.records, strict=True)]
    return Samples(answers, texts, [sum(t.values()) for t in terms], terms, parsed)


def cut_answers(new_ids: Tensor, budgets: Sequence[int], stop_ids: Sequence[int]) -> list[list[int]]:
    """Each row's answer tokens: up to and including its first stop token, at most `budgets[i]` tokens."""
    stops = set(stop_ids)
    out = []
    for row, budget in zip(new_ids.tolist(), budgets, strict=True):
        row = row[:budget]
        end = next((k for k, t in enumerate(row) if t in stops), None)
        out.append(row if end is None else row[:end + 1])
    return out


def token_logprobs(backbone: Backbone, inputs: Mapping[str, Tensor], labels: Tensor,
                   temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """log π(answer token) at every labelled position: `[N, K]` log-probabilities and their `[N, K]` mask,
    over the K positions where some row has an answer token (the LM head runs only there)."""
    targets = labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    logits = backbone.logits(inputs, keep).float() / temperature
    targets = targets[:, keep]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def answer_inputs(backbone: Backbone, prompts: Mapping[str, Tensor], answers: list[list[int]]
                  ) -> tuple[dict[str, Tensor], Tensor]:
    """`[prompt; answer]` rows and their labels (the answer tokens), built by the processor as for a
    supervised batch (`BackboneProcessor.append_responses`: per-token inputs extended as generation
    extends them), on the prompts' device."""
    ids = prompts["input_ids"]
    device = ids.device
    # the processor builds the rows on the CPU; per-token inputs go there and back, pixel values stay
    host = {k: v.cpu() if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[:2] == ids.shape else v
            for k, v in prompts.items()}
    inputs, labels = backbone.processor.append_responses(host, answers)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}, labels.to(device)


def check_sampling_stage(stage: Stage, tasks: Mapping[str, Task], backbone: Backbone, objective: str) -> None:
    """At start: the stage's tasks are the model's and have a reward, the backbone samples and has LoRA.

    Raises:
        ValueError: naming the stage, the field and what was expected.
    """
    where = f"Stage {stage.name!r} (objective: {objective})"
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


def check_max_new_tokens(budgets: Mapping[str, int] | None, owner: str) -> dict[str, int] | None:
    """Validate a per-task answer budget: a mapping task -> int >= 1 (None stays None)."""
    if budgets is None:
        return None
    if not isinstance(budgets, Mapping):
        raise ValueError(f"{owner}: max_new_tokens={budgets!r}, expected None or a mapping task -> int >= 1")
    for task, n in budgets.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{owner}: max_new_tokens[{task!r}]={n!r}, expected an int >= 1")
    return dict(budgets)


def log_task_rewards(module: LightningModule, names: list[str], samples: Samples, group: int) -> None:
    """`train/{task}/reward` and `train/{task}/reward/{term}` (each weighted term of `Task.reward_breakdown`):
    the mean over the task's answers of the step."""
    device = module.device
    for task in sorted(set(names)):
        rows = [k for k, t in enumerate(names) if t == task]
        size = max(len(rows) // group, 1)
        module.log(f"train/{task}/reward", torch.tensor(sum(samples.rewards[k] for k in rows) / len(rows),
                                                        device=device, dtype=torch.float32), batch_size=size)
        for term in sorted({name for k in rows for name in samples.terms[k]}):
            mean = sum(samples.terms[k].get(term, 0.0) for k in rows) / len(rows)
            module.log(f"train/{task}/reward/{term}", torch.tensor(mean, device=device, dtype=torch.float32),
                       batch_size=size)


# modes -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def no_dropout(module: nn.Module) -> Iterator[None]:
    """Dropout layers in eval mode (the rest keeps its mode: gradient checkpointing stays on).

    Dropout layers are torch's public dropout classes (`DROPOUTS`; their common base is private)."""
    layers = [m for m in module.modules() if isinstance(m, DROPOUTS) and m.training]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


DROPOUTS: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                                         nn.FeatureAlphaDropout)
"""torch's dropout layers (every public subclass of its private `_DropoutNd`; tests/test_objectives.py checks)."""


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


# the reference policy ----------------------------------------------------------------------------

def reference_policy(backbone: Backbone) -> contextlib.AbstractContextManager:
    """The reference π_ref: the same model with its LoRA adapters disabled (peft's `disable_adapter`)."""
    disable = getattr(backbone.model, "disable_adapter", None)
    if disable is None:
        raise ValueError(f"{type(backbone).__name__}.model has no LoRA adapters (no disable_adapter()), so there is "
                         "no reference policy; the objective needs EmoVerseModule's LoRA")
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


class Reference:
    """The reference policy of a KL term or a preference loss, and its checkpoint state.

    Args:
        kind: "base" = the same model with its LoRA adapters disabled (no copy of any weight);
            "stage_start" = the model as the stage began (e.g. after SFT), from a frozen copy of the weights
            the stage trains (the adapters: a few MB), taken at the stage's first step and kept in checkpoints.
    """

    def __init__(self, kind: ReferenceKind = "base") -> None:
        self.kind = kind
        self._weights: tuple[int, dict[str, Tensor]] | None = None
        """(stage index, weights) of a "stage_start" reference."""

    def __call__(self, module: nn.Module, backbone: Backbone, stage: int) -> contextlib.AbstractContextManager:
        """A context in which `backbone` (inside `module`) is the reference policy of stage `stage`."""
        if self.kind == "base":
            return reference_policy(backbone)
        if self._weights is None or self._weights[0] != stage:
            self._weights = (stage, snapshot(module))  # the stage's first step (restored on resume)
        return swapped_weights(module, self._weights[1])

    def state_dict(self) -> dict[str, Any]:
        if self._weights is None:
            return {}
        return {"stage": self._weights[0], "weights": self._weights[1]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self._weights = (int(state["stage"]), dict(state["weights"]))
