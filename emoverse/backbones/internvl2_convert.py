"""Convert a released InternVL2 checkpoint (remote-code `InternVLChatModel`) to the transformers-native
`InternVLForConditionalGeneration` folder that `emoverse_4b(path=...)` / `emoverse_8b(path=...)` load.

    python -m emoverse.backbones.internvl2_convert OpenGVLab-InternVL2-4B/ checkpoints/InternVL2-4B-hf

The original folder holds `config.json` (`vision_config`, `llm_config`, `downsample_ratio`),
safetensors weights named `vision_model.*`, `mlp1.*` and `language_model.*`, and the tokenizer.
The vision encoder's fused `attn.qkv` is split into q/k/v projections; the projector's
`mlp1.{0,1,3}` become `layer_norm`, `linear_1`, `linear_2`. A Phi-3 language model (InternVL2-4B)
is already a transformers class and keeps its keys; an InternLM2 one (InternVL2-8B) becomes the
Llama architecture it is equivalent to, its fused `wqkv` split per key-value group. Every
converted key must match the native model's, or the conversion fails naming the difference.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from safetensors.torch import load_file

IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}
CHAT_TEMPLATES = {
    # the released conversation templates ("phi3-chat", "internlm2-chat"), frames as <IMG_CONTEXT> slots
    "phi3": ("<|{role}|>\n", "<|end|>\n", "<|assistant|>\n"),
    "internlm2": ("<|im_start|>{role}\n", "<|im_end|>\n", "<|im_start|>assistant\n"),
}
_VISION_KEYS = {"qkv_bias": "attention_bias", "qk_normalization": "use_qk_norm", "hidden_size": "hidden_size",
                "intermediate_size": "intermediate_size", "num_hidden_layers": "num_hidden_layers",
                "num_attention_heads": "num_attention_heads", "norm_type": "norm_type",
                "layer_norm_eps": "layer_norm_eps", "hidden_act": "hidden_act"}
_INTERNLM2_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "bos_token_id",
                   "eos_token_id", "pad_token_id")
_VISION_RENAMES = [(r"^vision_model\.", "model.vision_tower."), (r"\.layers\.", ".layer."),
                   (r"embeddings\.class_embedding$", "embeddings.cls_token"),
                   (r"embeddings\.position_embedding$", "embeddings.position_embeddings"),
                   (r"embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
                   (r"\.ls1$", ".lambda_1"), (r"\.ls2$", ".lambda_2"), (r"\.attn\.proj\.", ".attention.projection_layer."),
                   (r"\.norm1\.", ".layernorm_before."), (r"\.norm2\.", ".layernorm_after.")]
_PROJECTOR_RENAMES = [(r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
                      (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
                      (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2.")]
_INTERNLM2_RENAMES = [(r"\.tok_embeddings\.", ".embed_tokens."), (r"\.attention\.wo\.", ".self_attn.o_proj."),
                      (r"\.feed_forward\.w1\.", ".mlp.gate_proj."), (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
                      (r"\.feed_forward\.w2\.", ".mlp.down_proj."), (r"\.attention_norm\.", ".input_layernorm."),
                      (r"\.ffn_norm\.", ".post_attention_layernorm.")]


def native_config(original: dict[str, Any]) -> tuple[tf.InternVLConfig, str]:
    """The native configuration of an original InternVL2 `config.json`, and its language model family."""
    vision, llm = original["vision_config"], original["llm_config"]
    arch = (llm.get("architectures") or [""])[0]
    if arch == "Phi3ForCausalLM":
        family, text = "phi3", {k: v for k, v in llm.items() if k in tf.Phi3Config().to_dict() and k != "architectures"}
        text["model_type"] = "phi3"
    elif arch == "InternLM2ForCausalLM":
        family, text = "internlm2", {k: llm[k] for k in _INTERNLM2_KEYS if k in llm}
        text.update(model_type="llama", attention_bias=bool(llm.get("bias", False)), tie_word_embeddings=False)
        if llm.get("rope_scaling"):
            text["rope_scaling"] = llm["rope_scaling"]
    else:
        raise ValueError(f"llm_config.architectures={llm.get('architectures')!r}: expected Phi3ForCausalLM "
                         "(InternVL2-4B) or InternLM2ForCausalLM (InternVL2-8B)")
    side = vision["image_size"]
    patch = vision["patch_size"]
    vision_cfg = {new: vision[old] for old, new in _VISION_KEYS.items() if old in vision}
    vision_cfg.update(image_size=[side, side], patch_size=[patch, patch], use_absolute_position_embeddings=True)
    config = tf.InternVLConfig(vision_config=vision_cfg, text_config=text, downsample_ratio=original["downsample_ratio"],
                               image_token_id=0, vision_feature_layer=original.get("select_layer", -1),
                               tie_word_embeddings=False)
    return config, family


def convert_state(state: dict[str, torch.Tensor], config: tf.InternVLConfig, family: str) -> dict[str, torch.Tensor]:
    """Original weight names and layouts → native ones."""
    out: dict[str, torch.Tensor] = {}
    text = config.text_config
    for key, value in state.items():
        if key.startswith("vision_model."):
            new = _rename(key, _VISION_RENAMES)
            if ".attn.qkv." in new:
                for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[new.replace(".attn.qkv.", f".attention.{name}_proj.")] = part
                continue
        elif key.startswith("mlp1."):
            new = _rename(key, _PROJECTOR_RENAMES)
        elif key.startswith("language_model."):
            new = _language_key(key, family)
            if family == "internlm2" and ".attention.wqkv." in new:
                out.update(_split_wqkv(new, value, text))
                continue
        else:
            raise ValueError(f"weight {key!r}: expected a name under vision_model., mlp1. or language_model.")
        out[new] = value
    return out


def convert_internvl2(src: str | Path, out: str | Path, dtype: str = "bfloat16", max_patches: int = 12,
                      trust_remote_code: bool = False) -> Path:
    """Convert the original InternVL2 folder `src` into a native folder `out` (safetensors + processor).

    Args:
        dtype: the weights' dtype in `out`.
        max_patches: the image processor's tile limit (the release: `max_dynamic_patch` 12).
        trust_remote_code: needed to load InternLM2's tokenizer (InternVL2-8B), an explicit opt-in.
    """
    src, out = Path(src), Path(out)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src / 'config.json'} is missing; expected an original InternVL2 folder")
    config, family = native_config(json.loads((src / "config.json").read_text()))
    tokenizer = tf.AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code,
                                                 extra_special_tokens=IMAGE_TOKENS)
    config.image_token_id = tokenizer.context_image_token_id
    with torch.device("meta"):
        model = tf.InternVLForConditionalGeneration(config)
    state = convert_state(_load_weights(src), config, family)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"{src}: converted weights do not match InternVLForConditionalGeneration: missing "
                         f"{missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)})")
    model.load_state_dict({k: v.to(getattr(torch, dtype)) for k, v in state.items()}, assign=True)
    model.save_pretrained(out, safe_serialization=True)
    side = config.vision_config.image_size[0]
    processor = tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(size={"height": side, "width": side}, crop_to_patches=True,
                                                 max_patches=max_patches, image_mean=[0.485, 0.456, 0.406],
                                                 image_std=[0.229, 0.224, 0.225]),
        tokenizer=tokenizer, video_processor=tf.InternVLVideoProcessor(),
        image_seq_length=int((side // config.vision_config.patch_size[0]) ** 2 * config.downsample_ratio ** 2),
        chat_template=chat_template(family),
    )
    processor.save_pretrained(out)
    return out


def chat_template(family: str) -> str:
    """The released conversation template of `family`, with content lists and `<IMG_CONTEXT>` frame slots."""
    head, end, assistant = CHAT_TEMPLATES[family]
    head = head.replace("{role}", "' + m['role'] + '")
    return (
        "{% for m in messages %}{{ '" + head + "' }}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '" + end.replace("\n", "\\n") + "' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + assistant.replace("\n", "\\n") + "' }}{% endif %}"
    ).replace("\n", "\\n")


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _language_key(key: str, family: str) -> str:
    if key == "language_model.lm_head.weight" or key == "language_model.output.weight":
        return "lm_head.weight"
    new = re.sub(r"^language_model\.model\.", "model.language_model.", key)
    return _rename(new, _INTERNLM2_RENAMES) if family == "internlm2" else new


def _split_wqkv(key: str, value: torch.Tensor, text: Any) -> dict[str, torch.Tensor]:
    """InternLM2's fused rows are grouped per key-value head: [q × groups, k, v] × kv_heads."""
    kv, head_dim = text.num_key_value_heads, text.hidden_size // text.num_attention_heads
    groups = text.num_attention_heads // kv
    rows = value.reshape(kv, groups + 2, head_dim, -1)
    parts = {"q": rows[:, :groups], "k": rows[:, -2], "v": rows[:, -1]}
    return {key.replace(".attention.wqkv.", f".self_attn.{n}_proj."): p.reshape(-1, value.shape[-1]).contiguous()
            for n, p in parts.items()}


def _load_weights(src: Path) -> dict[str, torch.Tensor]:
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src}: no *.safetensors files; expected the released weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emoverse.backbones.internvl2_convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="the original InternVL2 folder (config.json, *.safetensors, tokenizer)")
    parser.add_argument("out", help="the native folder to write")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--trust-remote-code", action="store_true", help="InternLM2's tokenizer (InternVL2-8B) needs it")
    args = parser.parse_args(argv)
    print(f"wrote {convert_internvl2(args.src, args.out, args.dtype, trust_remote_code=args.trust_remote_code)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
