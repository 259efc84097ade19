"""Padding-free packing beyond `input_ids`: which per-token inputs travel with a packed row, and the multi-dimensional
rotary positions (M-RoPE) of a packed row, computed per example.

The data side (`BackboneProcessor.pack`, in data workers, no model) concatenates each row's unpadded stretch of
every per-token input whose values do not depend on the other rows of the batch (`layout_bound` measures which do).
The model side (`HFVisionLanguageBackbone.packed_inputs`, before the forward) asks a model that computes its own
positions from the whole row (`get_rope_index`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4V, the Qwen2.5-Omni thinker,
...) for the positions of each example on its own, and gives them in the layout transformers reads as packed
M-RoPE input: `position_ids` `[4, 1, tokens]`, row 0 the plain per-example positions (from which it builds the
block-causal mask), rows 1-3 the model's temporal, height and width positions.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

ROPE_DERIVED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "audio_seqlens": lambda inputs: (inputs["feature_attention_mask"].sum(1)
                                     if inputs.get("feature_attention_mask") is not None else None),
    "second_per_grids": lambda inputs: inputs.get("video_second_per_grid"),
}
"""`get_rope_index` arguments that are no forward input but derived from one, as the forward derives them before
calling it (the Qwen-Omni thinkers: audio lengths from `feature_attention_mask`, `video_second_per_grid` renamed)."""


def layout_bound(batch: Mapping[str, torch.Tensor], alone: Sequence[Mapping[str, torch.Tensor]],
                 names: Sequence[str]) -> list[str]:
    """The per-token inputs among `names` whose entries for a row change when the row is batched with others.

    Args:
        batch: left-padded inputs of several rows (with `attention_mask`).
        alone: the same rows, each encoded on its own.
        names: the per-token inputs to check (batch and sequence in their first two dimensions).

    Returns:
        The names whose unpadded stretch of some row differs, in shape or value, from that row encoded alone (e.g.
        Mllama's `[rows, tokens, images, tiles]` cross-attention mask, sized to the batch's most images): a packed
        row cannot take them by concatenation. The others (a token's modality, `mm_token_type_ids`) pack.
    """
    out = []
    for name in names:
        for row, single in enumerate(alone):
            stretch = batch[name][row][batch["attention_mask"][row].bool()]
            own = single[name][0][single["attention_mask"][0].bool()]
            if stretch.shape != own.shape or not torch.equal(stretch, own):
                out.append(name)
                break
    return out


def mask_blocker(model: nn.Module, forward_names: frozenset[str]) -> str | None:
    """Why `model`'s attention mask would cross examples or miss tokens in a packed row (one line), or None.

    transformers builds the block-causal mask of a packed row by remapping a mask function's token indices to
    each example's own positions; a function that reads a per-token input by row index then reads the wrong tokens.
    Gemma 3's `create_masks_for_vision_model` (Gemma 4's too, in transformers 5.24) hands the bidirectional
    image-token overlay of its sliding-window layers over as such a function (`or_mask_function`, reading
    `token_type_ids`): measured on `tiny_gemma3`, packed losses 0.23 % and gradients up to 11 % off the padded ones,
    and equal (7e-8) when the overlay is given as block ids instead. Its full-attention layers, PaliGemma's prefix
    mask and Gemma 3n (which builds no mask from `token_type_ids`) stay per example.
    """
    module = sys.modules.get(type(model).__module__)
    if "token_type_ids" in forward_names and callable(getattr(module, "create_masks_for_vision_model", None)):
        return (f"{type(model).__name__} masks image tokens of its sliding-window layers from token_type_ids by row "
                "index, which transformers does not remap per packed example")
    return None


def rope_index_path(model: nn.Module) -> str | None:
    """The module path, inside `model`, of the first module with a `get_rope_index` (the model computes its rotary
    positions from the whole row), or None."""
    return next((name for name, m in model.named_modules() if callable(getattr(m, "get_rope_index", None))), None)


def rope_index_blocker(module: nn.Module, forward_names: frozenset[str]) -> str | None:
    """Why the positions of `module.get_rope_index` cannot be computed per packed example (one line), or None: a
    required argument that is neither a forward input of the model nor derived from one (`ROPE_DERIVED`)."""
    given = forward_names | {"input_ids", "attention_mask"} | ROPE_DERIVED.keys()
    params = inspect.signature(module.get_rope_index).parameters.values()
    missing = sorted(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.default is p.empty and p.name not in given)
    if missing:
        return (f"{type(module).__name__}.get_rope_index needs {missing}, which its forward does not take, so its "
                "positions cannot be computed per packed example")
    return None


def packed_rope_positions(module: nn.Module, inputs: Mapping[str, Any], lengths: torch.Tensor) -> torch.Tensor:
    """The `position_ids` `[4, 1, tokens]` of a packed row for a model that computes M-RoPE positions itself.

    Row 0 is the packed row's plain positions (`inputs["position_ids"]`, restarting at 0 for every example):
    transformers builds the block-causal mask from it. Rows 1-3 are `module.get_rope_index` of each example on its
    own: the packed row is laid out again as a right-padded batch of its examples (per-token inputs split back by
    `lengths`, media inputs such as `image_grid_thw` as they are, in example order), which `get_rope_index` treats
    row by row (each row's positions start at 0 and take the next rows of the grids), exactly as the forward of
    the same examples padded does; the positions of the real tokens are then concatenated again.

    Args:
        module: the module with `get_rope_index` (`rope_index_path`).
        inputs: the packed model inputs (`BackboneProcessor.pack`).
        lengths: the tokens of each example, in order (`packed_lengths`).
    """
    text = inputs["position_ids"]
    ids = inputs["input_ids"]
    lengths = lengths.to(ids.device)
    width = int(lengths.max())
    mask = torch.arange(width, device=ids.device)[None] < lengths[:, None]
    tokens = ids.shape[1]

    def unpack(value: torch.Tensor) -> torch.Tensor:
        out = value.new_zeros((len(lengths), width, *value.shape[2:]))
        out[mask] = value[0]
        return out

    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(module.get_rope_index).parameters.items():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        if name == "attention_mask":
            kwargs[name] = mask.long()
        elif name in ROPE_DERIVED:
            kwargs[name] = ROPE_DERIVED[name](inputs)
        elif name in inputs:
            value = inputs[name]
            per_token = isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (1, tokens)
            kwargs[name] = unpack(value) if per_token else value
    rope, _ = module.get_rope_index(**kwargs)
    return torch.cat([text.reshape(1, 1, tokens).to(rope.dtype), rope[:, mask].unsqueeze(1)])


def rope_positions(module: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    """`module.get_rope_index` of a padded batch (`inputs` with its 2-D `attention_mask`): the rotary positions
    `[axes, rows, tokens]` the model's forward would compute for it (a shared-prompt row's prompts,
    `objectives.shared_rows`)."""
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(module.get_rope_index).parameters.items():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        if name in ROPE_DERIVED:
            kwargs[name] = ROPE_DERIVED[name](inputs)
        elif name in inputs:
            kwargs[name] = inputs[name]
    rope, _ = module.get_rope_index(**kwargs)
    return rope


def crossing_blocker(language_model: nn.Module) -> str | None:
    """Why `language_model` (a text decoder taking `input_ids` and `position_ids`) does not keep the examples of a
    packed row apart, measured: its outputs for an example packed after another must equal those of the example
    alone. A model that builds its causal mask without the packed positions (OPT's decoder: a tiny OPT's outputs came
    out 56 % off) or ignores `position_ids` fails; one whose probe cannot run (weights on the meta device, a forward
    that needs more than tokens) is not judged here (None).
    """
    weight = next(language_model.parameters(), None)
    vocab = getattr(getattr(language_model, "config", None), "vocab_size", None)
    if weight is None or weight.device.type == "meta" or not vocab:
        return None
    first, second = torch.arange(8) * 7 % vocab, torch.arange(6) * 11 % vocab + 1
    packed_ids = torch.cat([first, second])[None].to(weight.device)
    packed_pos = torch.cat([torch.arange(8), torch.arange(6)])[None].to(weight.device)
    modes = {m: m.training for m in language_model.modules()}
    language_model.eval()
    try:
        with torch.no_grad():
            alone = _output(language_model(input_ids=second[None].to(weight.device),
                                           position_ids=torch.arange(6)[None].to(weight.device), use_cache=False))
            packed = _output(language_model(input_ids=packed_ids, position_ids=packed_pos, use_cache=False))[:, 8:]
    except Exception:  # noqa: BLE001 - a model the probe cannot drive is judged by the other rules alone
        return None
    finally:
        for module, training in modes.items():
            module.train(training)
    off = float((packed.float() - alone.float()).abs().max() / alone.float().abs().max().clamp_min(1e-12))
    tolerance = 1e-3 if weight.dtype == torch.float32 else 5e-2
    if off <= tolerance:
        return None
    return (f"{type(language_model).__name__} lets the examples of a packed row attend to each other (an example "
            f"packed after another came out {off:.1%} off its outputs alone)")


def _output(out: Any) -> torch.Tensor:
    """The per-token output of a decoder forward: its logits, or its last hidden states."""
    for name in ("logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    return out[0]
