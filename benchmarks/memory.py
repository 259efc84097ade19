"""Training memory: measured on CPU for small LLM shapes, against `emoverse.memory.estimate`; the 4B/8B estimates.

For each shape (the tiny backbone's LLM, and a mid-size Llama) and method (LoRA, QLoRA, full
fine-tuning), with and without gradient checkpointing, one training step runs under bf16 autocast
(what `precision: bf16-mixed` does) on random weights, and four figures are measured exactly:
  * parameters: bytes of every parameter (and, for QLoRA, its quantization state);
  * gradients: bytes of every `.grad` after backward;
  * optimizer: bytes of AdamW's state after one step;
  * activations: bytes of the distinct tensors autograd saves for backward during the forward pass
    (`torch.autograd.graph.saved_tensors_hooks`), i.e. what the step holds at its peak.
The same shape goes through the analytic estimator; each figure's ratio measured / estimated is
the estimator's check (the baseline of this benchmark). Then the estimator's table for the EmoVerse-4B and -8B shapes at the paper's
settings. The last line is one JSON object.

Run: python benchmarks/memory.py [--shapes tiny mid]; `--fit` re-measures the per-block activation
coefficients the estimator uses (`emoverse.memory.BLOCK_BYTES`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import LlamaConfig, LlamaForCausalLM

from emoverse.memory import Architecture, LLMShape, TrainSettings, VisionShape, estimate, paper_table

# the tiny backbone's LLM (emoverse/backbones/tiny.py: hidden 128, 2 layers, 4 heads / 2 KV heads,
# vocab of the tiny tokenizer; untied here so that LoRA/full compare like the real models) and a mid-size one
SHAPES = {
    "tiny": LLMShape(layers=2, hidden=128, intermediate=256, heads=4, kv_heads=2, vocab=2048),
    "mid": LLMShape(layers=4, hidden=512, intermediate=1376, heads=8, kv_heads=4, vocab=32000),
}
NO_VISION = VisionShape(layers=0, hidden=0, intermediate=0, image_size=0, patch_size=1)
BATCH, TOKENS, RESPONSE = 2, 256, 32


def build(shape: LLMShape, method: str, checkpointing: bool, workdir: str) -> torch.nn.Module:
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        LlamaForCausalLM(config).save_pretrained(workdir)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = LlamaForCausalLM.from_pretrained(workdir, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map="cpu")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    else:
        model = LlamaForCausalLM(config).to(torch.float32 if method == "full" else torch.bfloat16)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method in ("lora", "qlora"):
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=targets))
    model.train()
    return model


def tensor_bytes(tensors: Any) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def parameter_bytes(model: torch.nn.Module) -> int:
    total = tensor_bytes(model.parameters())
    for p in model.parameters():  # bitsandbytes keeps the 4-bit absmax constants beside the weight
        state = getattr(p, "quant_state", None)
        if state is not None:
            total += tensor_bytes(v for v in state.as_dict(packed=False).values() if isinstance(v, torch.Tensor))
    return total


def measure(shape: LLMShape, method: str, checkpointing: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        model = build(shape, method, checkpointing, workdir)
        params = parameter_bytes(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        ids = torch.randint(0, shape.vocab, (BATCH, TOKENS))
        labels = torch.full_like(ids, -100)
        labels[:, -RESPONSE:] = ids[:, -RESPONSE:]
        saved: dict[int, int] = {}
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved by reference: no new memory

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() not in weights:
                saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t

        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            keep = torch.arange(TOKENS - RESPONSE - 1, TOKENS - 1)
            logits = model(input_ids=ids, logits_to_keep=keep).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels[:, -RESPONSE:].flatten())
        activations = sum(saved.values())
        loss.backward()
        grads = tensor_bytes(p.grad for p in trainable)
        optimizer.step()
        optim = tensor_bytes(v for state in optimizer.state.values() for v in state.values() if v.dim() > 0)
    return {"parameters": params, "gradients": grads, "optimizer": optim, "activations": activations}


def estimated(shape: LLMShape, method: str, checkpointing: bool) -> dict[str, float]:
    arch = Architecture(name="bench", vision=NO_VISION, projector_params=0, llm=shape, visual_tokens_per_frame=0)
    settings = TrainSettings(method=method, batch_size=BATCH, frames=0, text_tokens=TOKENS, response_tokens=RESPONSE,
                             gradient_checkpointing=checkpointing, overhead_gb=0.0)
    est = estimate(arch, settings)
    return {"parameters": est.parameters, "gradients": est.gradients, "optimizer": est.optimizer,
            "activations": est.activations}


def block_bytes_per_token(shape: LLMShape, method: str, checkpointing: bool) -> float:
    """Bytes one decoder block saves for backward per token: (2 blocks - 1 block) / tokens."""
    totals = []
    for layers in (1, 2):
        got = measure(replace(shape, layers=layers), method, checkpointing)
        totals.append(got["activations"])
    extra = 0.0
    if method == "full" and not checkpointing:  # autocast's bf16 weight copies do not scale with tokens
        extra = 2.0 * shape.block_linear_params / shape.layers
    return (totals[1] - totals[0] - extra) / (BATCH * TOKENS)


def fit_coefficients() -> dict[str, list[float]]:
    """Least-squares (hidden, intermediate, kv_dim) coefficients of `block_bytes_per_token` over 4 shapes."""
    import numpy as np

    shapes = [LLMShape(layers=1, hidden=h, intermediate=i, heads=8, kv_heads=kv, vocab=1000)
              for h, i, kv in ((512, 1376, 4), (512, 2752, 4), (512, 1376, 8), (768, 1376, 4))]
    design = np.array([[s.hidden, s.intermediate, s.kv_dim] for s in shapes], dtype=float)
    fits = {}
    for method in ("lora", "qlora", "full"):
        for ckpt in (False, True):
            y = np.array([block_bytes_per_token(s, method, ckpt) for s in shapes])
            coef = np.linalg.lstsq(design, y, rcond=None)[0]
            error = float(np.max(np.abs(design @ coef - y) / y))
            fits[f"{method}/{'ckpt' if ckpt else 'nockpt'}"] = [round(float(c), 2) for c in coef] + [round(error, 4)]
            print(f"{method:<6} ckpt={ckpt!s:<5} bytes/token/block = {coef[0]:.2f} h + {coef[1]:.2f} i + "
                  f"{coef[2]:.2f} kv   (max fit error {error:.2%})")
    return fits


def qlora_works() -> str | None:
    """None if bitsandbytes 4-bit trains on this CPU, else the reason."""
    try:
        measure(LLMShape(layers=1, hidden=64, intermediate=128, heads=2, kv_heads=2, vocab=128), "qlora", False)
    except Exception as error:  # noqa: BLE001 (reported, not hidden)
        return f"{type(error).__name__}: {error}"[:300]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--fit", action="store_true", help="refit emoverse.memory.BLOCK_BYTES and stop")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.fit:
        print(json.dumps(fit_coefficients()))
        return
    qlora_problem = qlora_works()
    methods = ["lora", "full"] + (["qlora"] if qlora_problem is None else [])
    if qlora_problem:
        print(f"QLoRA not measured: bitsandbytes 4-bit does not train on this CPU ({qlora_problem})")
    measured, ratios = {}, []
    print(f"{'shape':<5} {'method':<6} {'ckpt':<5} " + " ".join(f"{k:>22}" for k in ("parameters", "gradients",
          "optimizer", "activations")) + "   (measured MB / estimated MB)")
    for name in args.shapes:
        for method in methods:
            for ckpt in (False, True):
                got, want = measure(SHAPES[name], method, ckpt), estimated(SHAPES[name], method, ckpt)
                key = f"{name}/{method}/{'ckpt' if ckpt else 'nockpt'}"
                measured[key] = {k: round(v / 1e6, 3) for k, v in got.items()}
                cells = []
                for k in want:
                    ratio = got[k] / want[k] if want[k] else float("nan")
                    measured[key][f"{k}_ratio"] = round(ratio, 3)
                    if want[k]:
                        ratios.append(ratio)
                    cells.append(f"{got[k] / 1e6:9.2f}/{want[k] / 1e6:9.2f}")
                print(f"{name:<5} {method:<6} {str(ckpt):<5} " + " ".join(f"{c:>22}" for c in cells))
    table = paper_table()
    print("\nEstimates at the paper's settings (4 frames x 256 visual tokens + 256 text tokens, LoRA r=8, bf16):")
    print(f"{'model':<12} {'method':<6} {'ckpt':<5} {'batch':>5} {'params':>7} {'grads':>6} {'optim':>6} "
          f"{'activ':>6} {'total GB':>8} fits 24 GB")
    for row in table:
        print(f"{row['model']:<12} {row['method']:<6} {str(row['gradient_checkpointing']):<5} {row['batch_size']:>5} "
              f"{row['parameters']:>7.2f} {row['gradients']:>6.2f} {row['optimizer']:>6.2f} {row['activations']:>6.2f} "
              f"{row['total']:>8.2f} {row['fits_24gb']}")
    pick = {f"{r['model']}/{r['method']}/{'ckpt' if r['gradient_checkpointing'] else 'nockpt'}": r["total"] for r in table}
    qlora_8b = min(pick["emoverse_8b/qlora/ckpt"], pick["emoverse_8b/qlora/nockpt"])
    lora_4b = min(pick["emoverse_4b/lora/ckpt"], pick["emoverse_4b/lora/nockpt"])
    figures = {
        "measured_mb": measured,
        "ratio_measured_vs_estimated_median": round(statistics.median(ratios), 3),
        "ratio_measured_vs_estimated_min": round(min(ratios), 3),
        "ratio_measured_vs_estimated_max": round(max(ratios), 3),
        "qlora_measured": qlora_problem is None,
        "estimated_gb": pick,
        "goal_qlora_8b_le_24gb": qlora_8b <= 24.0,
        "goal_lora_4b_le_24gb": lora_4b <= 24.0,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
