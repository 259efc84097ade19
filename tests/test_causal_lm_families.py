"""`CausalLMBackbone` across transformers' causal-LM families, each a tiny random model built from its config and
loaded from a folder as a downloaded checkpoint is.

What differs between families and has broken before: the layers LoRA can adapt (GPT-2's `Conv1D`, Falcon's own
`nn.Linear` subclass: no adapter target was found), whether a packed row keeps its examples apart (OPT's decoder
builds its causal mask without the packed positions: its packed per-example losses differed from the padded ones, silently), the
cached likelihood scoring, generation and the merged export.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from emoverse import EmoVerseModule
from emoverse.backbones import Backbone, CausalLMBackbone
from emoverse.backbones.tiny import tiny_text_config, tiny_tokenizer
from emoverse.data.batches import Example
from emoverse.data.collator import AMTCollator

TOKENIZER = tiny_tokenizer()
COMMON = tiny_text_config(len(TOKENIZER), 64, 2)
IDS = {"vocab_size": len(TOKENIZER), "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1}
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2": COMMON,
    "qwen3": {**COMMON, "head_dim": 16},
    "mistral": COMMON,
    "gemma2": {**COMMON, "head_dim": 16, "sliding_window": 8},
    "phi3": COMMON,
    "olmo2": COMMON,
    "gpt_neox": COMMON,
    "falcon": COMMON,
    "gpt2": {**IDS, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 2048},
    "opt": {**IDS, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
            "max_position_embeddings": 2048, "word_embed_proj_dim": 64},
}
PACKS_WRONG = {"opt"}
"""Families whose packed rows let examples attend to each other: packing is refused, with the measured reason."""


def examples(n: int = 3) -> list[Example]:
    return [Example(id=f"r{i}", task="msa", query="How does the speaker feel?" + " really" * (2 * i),
                    response="Positive", images=[]) for i in range(n)]


def folder(family: str, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **FAMILIES[family]))
    out = tmp_path / family
    model.save_pretrained(out)
    TOKENIZER.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_trains_adapters_in_its_blocks_packs_exactly_and_scores_choices(family: str, tmp_path: Path) -> None:
    backbone = CausalLMBackbone(str(folder(family, tmp_path)))
    module = EmoVerseModule(backbone, tasks=["msa", "mer"])
    trained = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    blocks = {re.search(r"\.(\d+)\.", n).group(1) for n in trained}  # the first index in a name is its block's
    assert blocks == {"0", "1"}, f"{family}: adapters in blocks {sorted(blocks)}"  # every decoder block adapted
    assert all(m.training for m in module.modules())

    backbone.eval()
    reason = backbone.processor.packing_unsupported()
    if family in PACKS_WRONG:
        assert reason is not None and "attend to each other" in reason
    else:
        assert reason is None
        with torch.no_grad():
            padded = backbone.loss(AMTCollator(backbone.processor, "train")(examples()))["sample_loss_sum"]
            packed = backbone.loss(AMTCollator(backbone.processor, "train", pack=True)(examples()))["sample_loss_sum"]
        torch.testing.assert_close(packed, padded, atol=1e-4, rtol=1e-4)

    prompts = AMTCollator(backbone.processor, "generate")(examples())
    choices = [backbone.processor.tokenize(c) for c in ("Positive.", "Negative.")]
    torch.testing.assert_close(backbone.choice_logprobs(prompts.inputs, choices),
                               Backbone.choice_logprobs(backbone, prompts.inputs, choices), atol=1e-4, rtol=1e-4)
    answers = backbone.generate(prompts, [4, 4, 4])
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


@pytest.mark.parametrize("family", ["gpt2", "falcon"])
def test_adapters_on_conv1d_and_model_linear_subclasses_merge_on_export(family: str, tmp_path: Path) -> None:
    from emoverse.export import export_merged
    from tests.test_backbones import nudge_trained

    torch.manual_seed(0)
    module = EmoVerseModule(CausalLMBackbone(str(folder(family, tmp_path))), tasks=["msa"])
    nudge_trained(module, 0.05)
    module.eval()
    prompts = AMTCollator(module.processor, "generate")(examples(2))
    before = module.backbone.generate_ids(prompts.inputs, 4)
    export_merged(module, tmp_path / "out")
    reloaded = CausalLMBackbone(str(tmp_path / "out")).eval()
    assert torch.equal(reloaded.generate_ids(prompts.inputs, 4), before)


def test_a_composed_backbone_over_an_llm_that_packs_wrong_pads_instead() -> None:
    from emoverse.backbones import ComposedBackbone
    from emoverse.backbones.tiny import _tiny_vision_kwargs

    torch.manual_seed(0)
    opt = AutoModelForCausalLM.from_config(AutoConfig.for_model("opt", **FAMILIES["opt"]))
    backbone = ComposedBackbone(vision="vit_tiny_patch16_224", vision_kwargs=_tiny_vision_kwargs(64), llm=opt,
                                tokenizer=tiny_tokenizer())
    assert "OPTForCausalLM lets the examples of a packed row attend" in backbone.processor.packing_unsupported()
