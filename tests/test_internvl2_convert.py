"""InternVL2 release → native transformers folder: a tiny model written in the release's layout
(names, fused q/k/v, InternLM2's grouped wqkv) converts back to the same network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers as tf
from PIL import Image
from safetensors.torch import save_file

from emoverse.backbones import HFVisionLanguageBackbone
from emoverse.backbones.internvl2_convert import convert_internvl2
from emoverse.backbones.tiny import tiny_tokenizer
from emoverse.data.batches import Example
from emoverse.data.collator import AMTCollator

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, layer_norm_eps=1e-6,
              hidden_act="gelu", norm_type="layer_norm")
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
            rms_norm_eps=1e-5, rope_theta=10000.0, pad_token_id=0, eos_token_id=1, bos_token_id=None)


def native(family: str, vocab: int, image_token_id: int) -> tf.InternVLForConditionalGeneration:
    text = ({"model_type": "phi3", "num_key_value_heads": 4, **TEXT} if family == "phi3"
            else {"model_type": "llama", "num_key_value_heads": 2, **TEXT})
    config = tf.InternVLConfig(vision_config=dict(image_size=[32, 32], patch_size=[8, 8], attention_bias=True, **VISION),
                               text_config={"vocab_size": vocab, **text}, image_token_id=image_token_id,
                               downsample_ratio=0.5, tie_word_embeddings=False)
    torch.manual_seed(0)
    return tf.InternVLForConditionalGeneration(config).eval()


def released_layout(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """The inverse mapping, written from the release's module names (InternVLChatModel)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        if k.startswith("model.vision_tower."):
            k = k.replace("model.vision_tower.", "vision_model.").replace(".layer.", ".layers.")
            k = k.replace("cls_token", "class_embedding").replace("position_embeddings", "position_embedding")
            k = k.replace("patch_embeddings.projection", "patch_embedding").replace("lambda_1", "ls1")
            k = k.replace("lambda_2", "ls2").replace("attention.projection_layer", "attn.proj")
            k = k.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
            if re.search(r"attention\.[qkv]_proj", k):
                if ".q_proj." in k:  # q, k and v stacked as one qkv linear
                    fused = torch.cat([state[key], state[key.replace("q_proj", "k_proj")],
                                       state[key.replace("q_proj", "v_proj")]])
                    out[k.replace("attention.q_proj", "attn.qkv")] = fused
                continue
        elif k.startswith("model.multi_modal_projector."):
            k = (k.replace("model.multi_modal_projector.layer_norm", "mlp1.0")
                 .replace("model.multi_modal_projector.linear_1", "mlp1.1").replace("model.multi_modal_projector.linear_2", "mlp1.3"))
        elif k == "lm_head.weight":
            k = "language_model.lm_head.weight" if family == "phi3" else "language_model.output.weight"
        else:
            k = k.replace("model.language_model.", "language_model.model.")
            if family == "internlm2":
                if re.search(r"self_attn\.[qkv]_proj", k):
                    if ".q_proj." in k:
                        q = state[key].reshape(2, 2, 16, -1)   # kv heads 2, groups 2, head_dim 16
                        kk = state[key.replace("q_proj", "k_proj")].reshape(2, 1, 16, -1)
                        v = state[key.replace("q_proj", "v_proj")].reshape(2, 1, 16, -1)
                        out[k.replace("self_attn.q_proj", "attention.wqkv")] = torch.cat([q, kk, v], 1).reshape(-1, 64)
                    continue
                for a, b in [("embed_tokens", "tok_embeddings"), ("self_attn.o_proj", "attention.wo"),
                             ("mlp.gate_proj", "feed_forward.w1"), ("mlp.up_proj", "feed_forward.w3"),
                             ("mlp.down_proj", "feed_forward.w2"), ("post_attention_layernorm", "ffn_norm"),
                             ("input_layernorm", "attention_norm")]:
                    k = k.replace(a, b)
        out[k] = value.contiguous()
    return out


@pytest.mark.parametrize("family", ["phi3", "internlm2"])
def test_release_layout_converts_to_the_same_network(family: str, tmp_path: Path) -> None:
    tok = tiny_tokenizer(extra_tokens=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"))
    model = native(family, len(tok), tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    src = tmp_path / "release"
    src.mkdir()
    save_file(released_layout(model.state_dict(), family), str(src / "model.safetensors"))
    arch = "Phi3ForCausalLM" if family == "phi3" else "InternLM2ForCausalLM"
    llm = {"architectures": [arch], "vocab_size": len(tok), **TEXT,
           "num_key_value_heads": 4 if family == "phi3" else 2}
    vision = {"image_size": 32, "patch_size": 8, "qkv_bias": True, "qk_normalization": False, **VISION}
    (src / "config.json").write_text(json.dumps({"architectures": ["InternVLChatModel"], "vision_config": vision,
                                                  "llm_config": llm, "downsample_ratio": 0.5, "select_layer": -1}))
    tok.save_pretrained(src)

    out = convert_internvl2(src, tmp_path / "native", dtype="float32", max_patches=1)
    bb = HFVisionLanguageBackbone(str(out)).eval()
    converted, original = bb.core.state_dict(), model.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)  # every split and rename exact
    ex = Example(id="r", task="msa", query="How does the speaker feel?", response="Positive",
                 images=[Image.new("RGB", (48, 40), (200, 30, 30))])
    inputs = AMTCollator(bb.processor, "generate")([ex]).inputs
    assert (inputs["input_ids"] == tok.convert_tokens_to_ids("<IMG_CONTEXT>")).sum() == 4  # 32 px tile, shuffle 0.5
    with torch.no_grad():
        assert torch.allclose(bb.core(**inputs).logits, model(**inputs).logits, atol=1e-5)


def test_unknown_language_model_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"vision_config": {}, "llm_config": {"architectures": ["GPT2"]},
                                                       "downsample_ratio": 0.5}))
    with pytest.raises(ValueError, match="llm_config.architectures=\\['GPT2'\\]: expected Phi3ForCausalLM"):
        convert_internvl2(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        convert_internvl2(tmp_path / "nowhere", tmp_path / "out")
