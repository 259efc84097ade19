"""Shared-prompt rows: one row per prompt, `[prompt; answer_1; ...; answer_G]`, in which every answer attends to
the prompt and to itself only, so a group's prompt (its media included) is encoded once instead of once per answer.

Each answer's positions continue from the prompt's end, exactly as in its own `[prompt; answer]` row: plain
positions, or for a model that computes M-RoPE positions itself (`get_rope_index`) the prompt's own positions, the
answer's continuing from the last prompt token (a text token, the assistant header) by one per token on every axis,
as the model gives text after its last medium. The attention is a 4D additive mask `[prompts, 1, tokens, tokens]`,
which transformers hands to sdpa and eager attention as it is (`masking_utils`: "an already prepared 4D mask ... is
returned as-is"). An answer's first token is predicted by the last prompt token, every later one by the token
before it; `shared_logprobs` gathers the logits accordingly and returns them in the repeated layout (one row per
answer), so the losses read them unchanged.

Prefix Grouper (Liu et al. 2025, arXiv 2506.05433) shows the same: the shared prefix encoded once gives the
repeated computation's outputs and gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from emoverse.backbones.processor_packing import per_token_inputs

if TYPE_CHECKING:
    from emoverse.backbones.base import Backbone
    from emoverse.curriculum.stage import Stage


def sharing_unsupported(backbone: Backbone) -> str | None:
    """Why `backbone` cannot score answers in shared-prompt rows (one line), or None (measured once per backbone).

    A shared row needs what a packed row needs (per-token inputs that do not depend on other rows, positions the
    model takes as given): a backbone that cannot pack (`packing_unsupported`) cannot share. Its 4D mask replaces the
    masks the model would build, so a model whose attention is more than causal-with-padding cannot share either:
    sliding-window layers (Gemma 3n; `tiny_gemma3n` and `tiny_paligemma` measured up to 2.6 % off), a mask built from
    `token_type_ids` (PaliGemma's bidirectional prompt), or an attention kernel that takes no 4D mask (flash
    attention).
    """
    cached = getattr(backbone, "_sharing_unsupported", False)
    if cached is not False:
        return cached
    reason = backbone.processor.packing_unsupported()
    lm = backbone.part("language_model")
    config = getattr(lm, "config", None)
    layers = set(getattr(config, "layer_types", None) or ())
    kernel = str(getattr(config, "_attn_implementation", None) or "")
    if reason is None and ("sliding_attention" in layers or getattr(config, "use_sliding_window", False)):
        reason = "its sliding-window layers build masks of their own, which a shared row's 4D mask would replace"
    if reason is None and "token_type_ids" in (getattr(backbone.processor, "input_names", None) or ()):
        reason = ("its model builds part of its mask from token_type_ids (bidirectional prompt or image tokens), which "
                  "a shared row's 4D mask would replace")
    if reason is None and kernel.startswith("flash"):
        reason = f"its attention kernel {kernel!r} takes no 4D mask"
    reason = None if reason is None else f"prompts cannot be shared: {reason}"
    backbone._sharing_unsupported = reason  # type: ignore[attr-defined]
    return reason


def warn_unshared(stage: Stage, backbone: Backbone, objective: str) -> None:
    """At setup, one line per thing `backbone` cannot share (scoring rows, sampling from one prefill) and what it
    does instead."""
    where = f"Stage {stage.name!r} (objective: {objective})"
    reason = sharing_unsupported(backbone)
    if reason is not None:
        warnings.warn(f"{where}: {reason}; scoring repeated [prompt; answer] rows", stacklevel=3)
    reason = backbone.group_sampling_unsupported()
    if reason is not None:
        warnings.warn(f"{where}: {reason}; sampling from repeated prompts", stacklevel=3)


@dataclass
class SharedRows:
    """Shared-prompt rows and where each answer token's log-probability comes from.

    Attributes:
        inputs: the model inputs, `[prompts, P + W]` (left-padded prompts of width P, answers after, right-padded
            to W), with a 4D additive `attention_mask` and `position_ids`.
        keep: the positions whose logits are computed (`P - 1 .. P + W - 2`).
        source: `[N, T]` for answer n's token t, the index into `keep` of the position predicting it.
        targets: `[N, T]` the answer tokens (0 at padding).
        mask: `[N, T]` True at answer tokens.
        row: `[N]` the shared row of each answer.
    """

    inputs: dict[str, Any]
    keep: Tensor
    source: Tensor
    targets: Tensor
    mask: Tensor
    row: Tensor


def shared_rows(backbone: Backbone, prompts: Mapping[str, Tensor], groups: Sequence[Sequence[Sequence[int]]]
                ) -> SharedRows:
    """Shared-prompt rows for left-padded prompts (each once) and each prompt's answers.

    Args:
        backbone: the model (its processor extends per-token inputs; an M-RoPE model gives the prompts' positions).
        prompts: left-padded model inputs, one row per distinct prompt, each medium once.
        groups: per prompt, its answers' token ids (the answers of one prompt in order).
    """
    proc = backbone.processor
    ids, pmask = prompts["input_ids"], prompts["attention_mask"].bool()
    device = ids.device
    rows, width = ids.shape
    totals = [sum(len(a) for a in g) for g in groups]
    answers_width = max(max(totals), 1)
    length = width + answers_width
    per_token = {k: v.cpu() for k, v in per_token_inputs(prompts, proc.media_inputs).items()}
    extended = proc.extend_for_response(per_token, answers_width) if per_token else {}
    input_ids = torch.full((rows, length), proc.pad_id, dtype=ids.dtype, device=device)
    input_ids[:, :width] = ids
    segment = torch.full((rows, length), -1, dtype=torch.long, device=device)  # 0 prompt, i + 1 answer i, -1 padding
    segment[:, :width][pmask] = 0
    offset = torch.zeros((rows, length), dtype=torch.long, device=device)  # token index within its answer
    count = max(len(g) for g in groups)
    longest = max((len(a) for g in groups for a in g), default=1) or 1
    source = torch.zeros((rows * count, longest), dtype=torch.long, device=device)
    targets = torch.zeros((rows * count, longest), dtype=torch.long, device=device)
    amask = torch.zeros((rows * count, longest), dtype=torch.bool, device=device)
    owner = []
    n = 0
    for b, group in enumerate(groups):
        col = width
        for i, answer in enumerate(group):
            k = len(answer)
            tokens = torch.tensor(list(answer), dtype=ids.dtype, device=device)
            input_ids[b, col:col + k] = tokens
            segment[b, col:col + k] = i + 1
            offset[b, col:col + k] = torch.arange(k, device=device)
            # token t of the answer sits at column col + t; its predictor is the last prompt token (keep index 0)
            # for t = 0, else the column before it (keep index col + t - width)
            if k:
                source[n, :k] = torch.arange(col - width, col - width + k, device=device)
                source[n, 0] = 0
                targets[n, :k] = tokens
                amask[n, :k] = True
            owner.append(b)
            n += 1
            col += k
    source, targets, amask = source[:n], targets[:n], amask[:n]
    prompt_len = pmask.sum(1)
    text_pos = torch.zeros((rows, length), dtype=torch.long, device=device)
    text_pos[:, :width] = (pmask.long().cumsum(1) - 1).clamp(min=0)
    answer_cols = segment > 0
    text_pos[answer_cols] = (prompt_len[:, None].expand(rows, length) + offset)[answer_cols]
    position_ids: Tensor = text_pos
    rope = backbone.shared_positions(prompts)
    if rope is not None:  # [axes, rows, width] positions of the prompts; answers continue from the last prompt token
        axes = rope.shape[0]
        full = torch.zeros((axes, rows, length), dtype=rope.dtype, device=device)
        full[:, :, :width] = rope.to(device)
        last = rope[:, :, -1].to(device)  # left-padded: the last column is every prompt's last token
        cont = last[:, :, None] + 1 + offset[None]
        full[:, answer_cols] = cont[:, answer_cols]
        position_ids = torch.cat([text_pos[None].to(full.dtype), full])
    q = torch.arange(length, device=device)
    causal = q[None, :] <= q[:, None]  # [query, key]
    kseg, qseg = segment[:, None, :], segment[:, :, None]
    allowed = causal[None] & (((kseg == 0) & (qseg >= 0)) | ((kseg == qseg) & (qseg > 0)))
    allowed |= torch.eye(length, dtype=torch.bool, device=device)[None]  # padding attends to itself: no empty row
    dtype = backbone.mask_dtype()
    attention = torch.zeros((rows, 1, length, length), dtype=dtype, device=device)
    attention.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    inputs = {k: v for k, v in prompts.items() if k not in per_token and k not in ("input_ids", "attention_mask")}
    for k, v in extended.items():
        out = v.new_zeros((rows, length, *v.shape[2:]))
        out[:, :width] = per_token[k]
        out[:, width:] = v[:, width:width + answers_width]
        inputs[k] = out.to(device)
    inputs.update(input_ids=input_ids, attention_mask=attention, position_ids=position_ids)
    keep = torch.arange(width - 1, width - 1 + answers_width, device=device)
    return SharedRows(inputs, keep, source, targets, amask, torch.tensor(owner, device=device))


def shared_logprobs(backbone: Backbone, rows: SharedRows, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """log π of every answer token of shared rows, `[N, T]` in the repeated layout (answer n's tokens in order,
    0 past its end), and the `[N, T]` mask: as `token_logprobs` on `[prompt; answer]` rows gives them."""
    logits = backbone.logits(rows.inputs, rows.keep).float() / temperature
    logp = torch.log_softmax(logits, -1)  # [prompts, W, vocab]
    out = logp[rows.row[:, None], rows.source, rows.targets]
    return out * rows.mask, rows.mask
