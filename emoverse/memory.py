"""Analytic training-memory estimate of a ViT → projector → LLM model: LoRA, QLoRA or full fine-tuning.

The estimate counts what a training step keeps alive on one device at its peak (the end of the
forward pass, when every activation saved for backward exists) and splits it as PyTorch sees it:
parameters, gradients, optimizer state, activations saved for backward, plus a transient term and a
fixed runtime overhead. `benchmarks/memory.py` checks the parameter, gradient, optimizer and
activation terms against measurements on the tiny backbone (same formulas, its shape) and prints
the estimates for the EmoVerse-4B and -8B shapes.

Assumptions (each is a field with a default, so a user can change it):
  * LLM: a pre-norm decoder (Llama/Phi-3/InternLM2 style) with a gated MLP (3 matrices), RMSNorm,
    and fused SDPA/flash attention, which saves no (seq × seq) matrix.
  * LoRA on every linear layer of the LLM's decoder blocks (emoverse's default targets), as the
    model splits them (`LLMShape.layout`: fused qkv / gate-up layers get one adapter).
  * Mixed precision: frozen weights in bf16 (2 B); trainable weights, their gradients and both
    AdamW moments in fp32 (4 + 4 + 8 B per trainable parameter); activations as bf16 autocast
    saves them (per-block coefficients measured, see BLOCK_BYTES).
  * QLoRA (bitsandbytes NF4 with double quantization): decoder linear weights take 4 bits plus
    0.127 bits of constants per weight (8-bit absmax per 64 weights, fp32 per 256 absmax);
    embeddings and the LM head stay unquantized and peft's `prepare_model_for_kbit_training`
    upcasts them (and the norms) to fp32.
  * The vision tower is frozen and sees no gradient, so autograd saves none of its activations.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from emoverse.backbones import internvl2_arch as internvl2

GB = 1e9
Method = Literal["lora", "qlora", "full"]


@dataclass(frozen=True)
class VisionShape:
    """A ViT encoder laid out as InternViT: biased q/k/v/o and MLP, two LayerNorms and two layer-scale
    vectors per block, a biased patch embedding, a class token and absolute position embeddings."""

    layers: int
    hidden: int
    intermediate: int
    image_size: int
    patch_size: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VisionShape:
        """The shape of a transformers `InternVLVisionConfig`'s keyword arguments."""
        return cls(layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                   intermediate=config["intermediate_size"], image_size=_side(config["image_size"]),
                   patch_size=_side(config["patch_size"]))

    @property
    def params(self) -> int:
        h, i = self.hidden, self.intermediate
        # q/k/v/o with bias, fc1/fc2 with bias, 2 LayerNorms (weight + bias), 2 layer-scale vectors
        per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h + 2 * h
        patch = 3 * self.patch_size**2 * h + h
        return self.layers * per_layer + patch + (self.tokens + 2) * h  # + class token and positions

    @property
    def tokens(self) -> int:
        """Patch tokens per image (before any pooling or pixel shuffle)."""
        return (self.image_size // self.patch_size) ** 2


def _side(size: int | Sequence[int]) -> int:
    return size if isinstance(size, int) else size[0]


@dataclass(frozen=True)
class LLMShape:
    """A decoder-only LLM with a gated MLP. Fields as in the model's `config.json`."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    layout: Literal["llama", "phi3"] = "llama"
    """How the block's linear layers are split: Llama q/k/v/o + gate/up/down; Phi-3 fuses
    `qkv_proj` and `gate_up_proj`. (InternLM2's fused `wqkv` does not occur: `internvl2_convert`
    splits it, so the 8B model trains as Llama.)"""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LLMShape:
        """The shape of a transformers text configuration's keyword arguments (Llama or Phi-3)."""
        if config["model_type"] not in ("llama", "phi3"):
            raise ValueError(f"model_type={config['model_type']!r}: expected 'llama' or 'phi3'")
        return cls(layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                   intermediate=config["intermediate_size"], heads=config["num_attention_heads"],
                   kv_heads=config["num_key_value_heads"], vocab=config["vocab_size"],
                   tied_embeddings=config.get("tie_word_embeddings", False), layout=config["model_type"])

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block (each gets a LoRA adapter)."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        attention = [(h, h + 2 * kv), (h, h)] if self.layout == "phi3" else [(h, h), (h, kv), (h, kv), (h, h)]
        mlp = [(h, 2 * i), (i, h)] if self.layout == "phi3" else [(h, i), (h, i), (i, h)]
        return attention + mlp

    @property
    def block_linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes)

    @property
    def embedding_params(self) -> int:
        """Input embeddings and LM head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.block_linear_params + self.embedding_params + norms

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (a + b) for a, b in self.linear_shapes)


@dataclass(frozen=True)
class Architecture:
    """A vision encoder → projector → LLM model, with where its numbers come from."""

    name: str
    vision: VisionShape
    projector_params: int
    llm: LLMShape
    visual_tokens_per_frame: int
    source: str = ""


@dataclass(frozen=True)
class TrainSettings:
    """One device's training step.

    Args:
        method: "lora" (frozen bf16 LLM), "qlora" (frozen NF4 LLM) or "full" (LLM and projector trained).
        batch_size: samples per device and step (micro-batch; accumulation adds nothing).
        frames: video frames per sample (each `visual_tokens_per_frame` tokens).
        text_tokens: prompt + response tokens per sample (padded length).
        response_tokens: tokens per sample the loss is computed on (logits are kept only there).
        lora_r: LoRA rank.
        lora_dropout: LoRA dropout > 0 saves a dropped copy of each adapted input.
        gradient_checkpointing: keep only each decoder block's input; recompute the block in backward.
        overhead_gb: CUDA context, cuBLAS workspace and allocator slack (not measured on CPU).
    """

    method: Method = "lora"
    batch_size: int = 1
    frames: int = 4
    text_tokens: int = 256
    response_tokens: int = 64
    lora_r: int = 8
    lora_dropout: bool = True
    gradient_checkpointing: bool = False
    overhead_gb: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in ("lora", "qlora", "full"):
            raise ValueError(f"TrainSettings.method={self.method!r}: expected 'lora', 'qlora' or 'full'")
        for name in ("batch_size", "frames", "text_tokens", "lora_r"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainSettings.{name}={getattr(self, name)}: expected >= 0")


NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8  # 4-bit weight + double-quantized absmax constants


@dataclass
class MemoryEstimate:
    """Bytes per category; `total` is their sum."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float
    transient: float
    overhead: float
    trainable_params: int = 0
    sequence_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.transient + self.overhead

    def as_gb(self) -> dict[str, float]:
        figures = {k: round(v / GB, 3) for k, v in asdict(self).items() if isinstance(v, float)}
        return figures | {"total": round(self.total / GB, 3)}


# Bytes one decoder block saves for backward per token, as coefficients of (hidden, intermediate,
# kv_dim), measured with transformers' Llama under bf16 autocast (CPU flash SDPA), LoRA r=8 on its 7
# linear layers with dropout 0.05: `python benchmarks/memory.py --fit` (4 shapes, fit error < 0.1 %):
# LoRA 48h + 12i + 4kv, QLoRA 48h + 18i + 4kv, full fine-tuning 30h + 8i + 4kv. They decompose as
# two fp32 RMSNorm inputs (8h), SDPA's q and output (4h) and k, v (4kv), SiLU and the gate product
# (6i; 12i for QLoRA, whose gate/up outputs are fp32 like its upcast residual stream), plus, per
# adapted linear layer, a bf16 copy of its input and an fp32 dropout mask: 6 B per input element
# (Llama's 7 layers read 6h + i). Full fine-tuning saves bf16 copies of the layer inputs instead, and
# of every weight (counted separately, 2 B per block parameter).
BLOCK_BYTES: dict[str, tuple[int, int, int]] = {"lora": (12, 6, 4), "qlora": (12, 12, 4), "full": (30, 8, 4)}
ADAPTER_INPUT_BYTES = {True: 6, False: 2}  # with / without LoRA dropout (without: derived, not measured)
# with gradient checkpointing each block keeps only its input: bf16 for LoRA, fp32 where the
# residual stream is fp32 (QLoRA's upcast embeddings, full fine-tuning's fp32 weights)
CHECKPOINT_BYTES = {"lora": 2, "qlora": 4, "full": 4}
LOGIT_BYTES = 4  # per kept logit: the fp32 log-softmax output cross-entropy saves


def block_activation_bytes(llm: LLMShape, method: Method, lora_dropout: bool = True) -> int:
    """Bytes one decoder block saves for backward, per token (see BLOCK_BYTES)."""
    ch, ci, ckv = BLOCK_BYTES[method]
    saved = ch * llm.hidden + ci * llm.intermediate + ckv * llm.kv_dim
    if method != "full":
        saved += ADAPTER_INPUT_BYTES[lora_dropout] * sum(a for a, _ in llm.linear_shapes)
    return saved


def estimate(arch: Architecture, settings: TrainSettings) -> MemoryEstimate:
    """Peak training memory of one device for `arch` under `settings` (see the module docstring).

    `activations` is what the forward pass leaves saved for backward; `transient` adds the largest
    short-lived working set: the block recomputed in backward under gradient checkpointing, one
    frozen ViT block, and for QLoRA one dequantized weight.
    """
    llm, s = arch.llm, settings
    tokens = s.frames * arch.visual_tokens_per_frame + s.text_tokens
    bt = s.batch_size * tokens
    lora = llm.lora_params(s.lora_r) if s.method in ("lora", "qlora") else 0
    other_llm = llm.params - llm.block_linear_params  # embeddings, LM head, norms
    vision = arch.vision.params * 2  # frozen bf16
    notes = []
    if s.method == "full":
        trainable = llm.params + arch.projector_params
        weights = vision + trainable * 4
    elif s.method == "lora":
        trainable = lora + arch.projector_params
        weights = vision + llm.params * 2 + trainable * 4
    else:
        trainable = lora + arch.projector_params
        weights = vision + llm.block_linear_params * NF4_BYTES + other_llm * 4 + trainable * 4
        notes.append("QLoRA: embeddings, LM head and norms upcast to fp32 by prepare_model_for_kbit_training")
    grads, optim = trainable * 4.0, trainable * 8.0
    block = block_activation_bytes(llm, s.method, s.lora_dropout)
    if s.gradient_checkpointing:
        activations = float(llm.layers * CHECKPOINT_BYTES[s.method] * llm.hidden * bt)
        recompute = float(block * bt)
    else:
        activations, recompute = float(llm.layers * block * bt), 0.0
    # the final norm's fp32 input and the logits at response positions (logits_to_keep)
    activations += 4 * llm.hidden * bt + LOGIT_BYTES * s.batch_size * s.response_tokens * llm.vocab
    # autocast's bf16 copies of fp32 weights, kept for backward: the LM head's (fp32 under full
    # fine-tuning and after QLoRA's upcast), and the blocks' under full fine-tuning (recomputed, so
    # made one block at a time, with gradient checkpointing)
    if s.method in ("full", "qlora"):
        activations += 2.0 * llm.vocab * llm.hidden
    if s.method == "full":
        block_copies = 2.0 * llm.block_linear_params / llm.layers
        if s.gradient_checkpointing:
            recompute += block_copies
        else:
            activations += block_copies * llm.layers
    vis_tokens = s.batch_size * s.frames * (arch.vision.tokens + 1)
    transient = recompute + vis_tokens * (arch.vision.hidden * 4 + arch.vision.intermediate) * 2.0
    if s.method == "qlora":
        transient += max(a * b for a, b in llm.linear_shapes) * 2.0
    return MemoryEstimate(parameters=float(weights), gradients=grads, optimizer=optim, activations=activations,
                          transient=transient, overhead=s.overhead_gb * GB, trainable_params=trainable,
                          sequence_tokens=tokens, notes=notes)


# The paper's two models, from the numbers the `emoverse_4b` / `emoverse_8b` presets build
# (emoverse/backbones/internvl2_arch.py, copied from the released InternVL2 config.json files):
#   InternViT-300M-448px: 24 layers, hidden 1024, intermediate 4096, image 448, patch 14 -> 1024 patches,
#     256 tokens per 448 px tile after InternVL2's 0.5 pixel shuffle.
#   InternVL2's projector `mlp1`: LayerNorm(4096) -> Linear(4096, llm_hidden) -> GELU -> Linear(llm_hidden,
#     llm_hidden), 4096 = 1024 x 4 after the pixel shuffle.
#   InternVL2-4B's Phi-3-mini-128k-instruct (vocabulary 32,020; fused qkv_proj and gate_up_proj) and
#   InternVL2-8B's InternLM2.5-7B-chat as Llama (vocabulary 92,553; wqkv split into q/k/v by the converter).
INTERN_VIT_300M = VisionShape.from_config(internvl2.INTERN_VIT_300M)


def _mlp1(vision_hidden: int, llm_hidden: int) -> int:
    width = int(vision_hidden / internvl2.DOWNSAMPLE_RATIO**2)  # pixel shuffle stacks 4 patches' channels
    return 2 * width + width * llm_hidden + llm_hidden + llm_hidden * llm_hidden + llm_hidden


def _internvl2(name: str, source: str) -> Architecture:
    llm = LLMShape.from_config(internvl2.TEXT_CONFIGS[name])
    return Architecture(name=name, vision=INTERN_VIT_300M, projector_params=_mlp1(INTERN_VIT_300M.hidden, llm.hidden),
                        llm=llm, visual_tokens_per_frame=internvl2.TOKENS_PER_TILE, source=source)


EMOVERSE_4B = _internvl2("emoverse_4b", "InternVL2-4B: InternViT-300M-448px + mlp1 + Phi-3-mini-128k-instruct")
EMOVERSE_8B = _internvl2("emoverse_8b", "InternVL2-8B: InternViT-300M-448px + mlp1 + InternLM2.5-7B-chat")
PRESETS = {a.name: a for a in (EMOVERSE_4B, EMOVERSE_8B)}

# The paper's settings per model, as examples/configs/m2se_{4b,8b}.yaml set them (the released scripts):
# data.batch_size 1 (accumulation 8 adds no memory), 4 frames per clip, one 448 px tile (256 visual
# tokens) per frame, LoRA r=8 with dropout 0.05, bf16.
PAPER_SETTINGS = {"emoverse_4b": TrainSettings(batch_size=1), "emoverse_8b": TrainSettings(batch_size=1)}


def paper_table(budget_gb: float = 24.0) -> list[dict[str, object]]:
    """Estimates for both presets x {lora, qlora, full} x {without, with} gradient checkpointing."""
    rows = []
    for name, arch in PRESETS.items():
        for method in ("lora", "qlora", "full"):
            for ckpt in (False, True):
                settings = replace(PAPER_SETTINGS[name], method=method, gradient_checkpointing=ckpt)
                est = estimate(arch, settings)
                rows.append({"model": name, "method": method, "gradient_checkpointing": ckpt,
                             "batch_size": settings.batch_size, "tokens": est.sequence_tokens,
                             "trainable_params": est.trainable_params, **est.as_gb(),
                             f"fits_{budget_gb:g}gb": est.total <= budget_gb * GB})
    return rows


_MODEL_NAMES = {"emoverse_4b": "EmoVerse-4B", "emoverse_8b": "EmoVerse-8B"}
_METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}


def markdown_table(batch_size: int | None = None, budget_gb: float = 24.0) -> str:
    """The memory table of docs/scaling.md: `paper_table` as Markdown (GB = 10⁹ bytes).

    Args:
        batch_size: samples per device; None keeps `PAPER_SETTINGS` (the m2se YAMLs' batch 1).
    """
    lines = [f"| model | method | checkpointing | batch | weights | grads + AdamW | activations | total | ≤ {budget_gb:g} GB |",
             "|---|---|---|---:|---:|---:|---:|---:|:-:|"]
    for name, arch in PRESETS.items():
        for method in ("lora", "qlora", "full"):
            for ckpt in (False, True):
                settings = replace(PAPER_SETTINGS[name], method=method, gradient_checkpointing=ckpt)
                if batch_size is not None:
                    settings = replace(settings, batch_size=batch_size)
                est = estimate(arch, settings)
                fits = "yes" if est.total <= budget_gb * GB else "no"
                lines.append(f"| {_MODEL_NAMES[name]} | {_METHOD_NAMES[method]} | {'yes' if ckpt else 'no'} | "
                             f"{settings.batch_size} | {est.parameters / GB:.2f} | "
                             f"{(est.gradients + est.optimizer) / GB:.2f} | {est.activations / GB:.2f} | "
                             f"{est.total / GB:.1f} | {fits} |")
    return "\n".join(lines)


def trained_parameters_line() -> str:
    """The trained-parameter sentence of docs/scaling.md, from the estimator's counts (LoRA r=8)."""
    parts = []
    for name, arch in PRESETS.items():
        lora = arch.llm.lora_params(PAPER_SETTINGS[name].lora_r)
        parts.append(f"{_MODEL_NAMES[name]} {(lora + arch.projector_params) / 1e6:.1f} M (LoRA {lora / 1e6:.1f} M, "
                     f"projector {arch.projector_params / 1e6:.1f} M)")
    return "Trained parameters: " + "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emoverse.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print docs/scaling.md's memory table (Markdown)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per device (default: the m2se YAMLs')")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.batch_size))
        print()
        print(trained_parameters_line())
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
