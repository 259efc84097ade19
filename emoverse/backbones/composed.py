"""`ComposedBackbone`: any timm vision encoder + a linear or MLP projector + any causal LM."""

from __future__ import annotations

from typing import Any, Literal

import timm
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from emoverse.backbones.base import Backbone, Processor

IMAGE_TOKEN = "<image>"
Quantization = Literal["4bit", "8bit"]


def build_projector(kind: Literal["linear", "mlp"], in_dim: int, out_dim: int, out_norm: float | None = None) -> nn.Module:
    """The paper's linear projector W_v, or LLaVA-1.5's two-layer MLP.

    Args:
        out_norm: initialise the last layer so that unit-variance inputs give outputs of about this
            L2 norm (the LLM's typical token-embedding norm). A projector trained from scratch at
            PyTorch's default init emits visual tokens several times the norm of the text
            embeddings, and dozens of them per frame then drown the text in every attention layer.
    """
    if kind == "linear":
        proj: nn.Module = nn.Linear(in_dim, out_dim)
    elif kind == "mlp":
        proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    else:
        raise ValueError(f"projector={kind!r}; expected 'linear' or 'mlp'")
    if out_norm is not None:
        last = proj if isinstance(proj, nn.Linear) else proj[-1]
        nn.init.zeros_(last.bias)
        with torch.no_grad():  # measure on a fixed unit-variance probe, then rescale the last layer
            probe = torch.randn(256, in_dim, generator=torch.Generator().manual_seed(0))
            last.weight.mul_(out_norm / proj(probe.to(last.weight.dtype)).norm(dim=-1).mean())
    return proj


def load_llm(
    name_or_path: str,
    dtype: str | None = None,
    quantization: Quantization | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """Load a causal LM and its tokenizer from a local path or hub id given explicitly.

    `quantization` loads 4-bit NF4 or 8-bit weights through bitsandbytes (QLoRA; needs CUDA).
    """
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        compute = getattr(torch, dtype) if dtype else torch.bfloat16
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                               bnb_4bit_use_double_quant=True)
            if quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True)
        )
    llm = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return llm, tokenizer


class ComposedBackbone(Backbone):
    """Vision encoder (timm) → projector → causal LM (transformers), assembled by injection.

    Args:
        vision: a timm model name (random weights unless `vision_pretrained`) or a timm model.
        llm: a local path or hub id of a causal LM, or a loaded `PreTrainedModel`.
        tokenizer: the tokenizer when `llm` is a model (loaded with the LLM when `llm` is a path).
        projector: "linear" (the paper) or "mlp".
        pool: average-pool the patch grid by this factor to cut visual tokens per frame.
        vision_pretrained: load the timm weights (`vision` must then name a pretrained tag).
        vision_kwargs: extra timm `create_model` arguments (img_size, depth, ...).
        dtype: torch dtype name for the LLM weights, e.g. "bfloat16".
        quantization: "4bit" / "8bit" bitsandbytes weights for QLoRA (CUDA only).
        trust_remote_code: explicit opt-in for hub models that ship their own code.
        lora_targets: peft target module names; default: the LLM's attention and MLP projections.
        max_length: context length; default: the LLM config's `max_position_embeddings`.
    """

    def __init__(
        self,
        vision: str | nn.Module,
        llm: str | PreTrainedModel,
        tokenizer: Any = None,
        projector: Literal["linear", "mlp"] = "linear",
        pool: int = 1,
        vision_pretrained: bool = False,
        vision_kwargs: dict[str, Any] | None = None,
        dtype: str | None = None,
        quantization: Quantization | None = None,
        trust_remote_code: bool = False,
        lora_targets: list[str] | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(vision, str):
            vision = timm.create_model(vision, pretrained=vision_pretrained, num_classes=0, **(vision_kwargs or {}))
        if isinstance(llm, str):
            llm, tokenizer = load_llm(llm, dtype, quantization, trust_remote_code)
        elif tokenizer is None:
            raise ValueError("ComposedBackbone: `tokenizer` is required when `llm` is a model, not a path")
        if pool < 1:
            raise ValueError(f"ComposedBackbone: pool={pool}; expected an integer >= 1")
        self.vision = vision
        self.llm = llm
        self.pool = pool
        self._lora_targets = lora_targets
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
            llm.resize_token_embeddings(len(tokenizer))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.chat_template is None:
            raise ValueError(f"ComposedBackbone: tokenizer {type(tokenizer).__name__} has no chat template; "
                             "set `tokenizer.chat_template` (a Jinja string) before building the backbone")
        embeddings = llm.get_input_embeddings().weight
        text_norm = float(embeddings.detach().float().norm(dim=-1).median())
        self.projector = build_projector(projector, vision.num_features, embeddings.shape[1], out_norm=text_norm)
        size = _input_size(vision)
        grid = size // _patch_size(vision)
        if grid % pool:
            raise ValueError(f"ComposedBackbone: pool={pool} does not divide the {grid}x{grid} patch grid")
        cfg = getattr(vision, "pretrained_cfg", {}) or {}
        self.processor = Processor(
            tokenizer=tokenizer,
            image_token=IMAGE_TOKEN,
            tokens_per_image=(grid // pool) ** 2,
            image_size=size,
            mean=tuple(cfg.get("mean", (0.5, 0.5, 0.5))),
            std=tuple(cfg.get("std", (0.5, 0.5, 0.5))),
            max_length=max_length or llm.config.max_position_embeddings,
        )
        self.freeze(("projector",))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.vision.forward_features(pixel_values.to(self.projector_dtype))
        feats = feats[:, getattr(self.vision, "num_prefix_tokens", 0):]
        if self.pool > 1:
            n, t, c = feats.shape
            g = int(t**0.5)
            grid = feats.transpose(1, 2).reshape(n, c, g, g)
            feats = nn.functional.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return self.projector(feats)

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def lora_target_modules(self) -> list[str]:
        if self._lora_targets:
            return list(self._lora_targets)
        names = {n.rsplit(".", 1)[-1] for n, m in self.llm.named_modules() if isinstance(m, nn.Linear)}
        names.discard("lm_head")
        return sorted(names)


def _input_size(vision: nn.Module) -> int:
    size = getattr(vision, "patch_embed", None) and vision.patch_embed.img_size
    if not size:
        raise ValueError(f"vision encoder {type(vision).__name__} exposes no patch_embed.img_size; "
                         "subclass Backbone for encoders that are not ViTs")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _patch_size(vision: nn.Module) -> int:
    patch = vision.patch_embed.patch_size
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)
