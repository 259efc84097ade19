"""LoRA (and QLoRA) on the backbone's LLM through peft, and per-part trainability."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.lora import LoraLayer
from torch import nn

from emoverse.backbones.base import Backbone

TrainPart = Literal["projector", "lora", "vision"]
TRAIN_PARTS: tuple[str, ...] = ("projector", "lora", "vision")


def add_lora(backbone: Backbone, r: int, alpha: int, dropout: float, gradient_checkpointing: bool = False) -> None:
    """Wrap `backbone.llm` in a peft LoRA model on the backbone's target modules.

    A 4-/8-bit LLM (bitsandbytes) is first prepared for k-bit training (QLoRA).
    """
    llm = backbone.llm
    if getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False):
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=backbone.lora_target_modules(),
                        task_type="CAUSAL_LM")
    backbone.llm = get_peft_model(llm, config)


def part_parameters(backbone: Backbone, part: str) -> list[nn.Parameter]:
    """The parameters of one trainable part: "projector", "vision" or "lora" (the adapters only)."""
    if part == "projector":
        return list(backbone.projector.parameters())
    if part == "vision":
        return list(backbone.vision.parameters())
    if part == "lora":
        return [p for m in backbone.llm.modules() if isinstance(m, LoraLayer)
                for name, p in m.named_parameters(recurse=True) if "lora_" in name]
    raise ValueError(f"unknown part {part!r}; expected one of {TRAIN_PARTS}")


def set_trainable(backbone: Backbone, parts: Collection[str]) -> list[nn.Parameter]:
    """Make exactly `parts` trainable; returns the parameters that were frozen and now train."""
    unknown = set(parts) - set(TRAIN_PARTS)
    if unknown:
        raise ValueError(f"unknown trainable parts {sorted(unknown)}; expected some of {TRAIN_PARTS}")
    wanted = {id(p) for part in parts for p in part_parameters(backbone, part)}
    newly = []
    for p in backbone.parameters():
        train = id(p) in wanted
        if train and not p.requires_grad:
            newly.append(p)
        p.requires_grad_(train)
    return newly
