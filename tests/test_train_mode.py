"""Loaded weights train in train mode, for every backbone kind that loads weights (issue 25).

`from_pretrained` returns modules in eval mode and Lightning keeps each module's mode at fit start ("Found N
module(s) in eval mode at the start of training"), so a loaded LLM's dropout would be silently off. The rule is
one, in `EmoVerseModule`: the backbone it trains is switched to train mode. Each kind here is loaded from a folder
the way a user's checkpoint is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoverse import EmoVerseModule
from emoverse.backbones import Backbone, CausalLMBackbone, HFVisionLanguageBackbone, create_backbone
from emoverse.export import export_merged, load_composed


def _composed(name: str, folder: Path) -> Backbone:
    export_merged(EmoVerseModule(name, tasks=["msa"]), folder)  # LLM (and speech encoder) as from_pretrained folders
    return load_composed(folder)


def _hf(name: str, folder: Path) -> Backbone:
    built = create_backbone(name)
    built.core.save_pretrained(folder)
    built.processor.processor.save_pretrained(folder)
    return HFVisionLanguageBackbone(str(folder), images_kwargs=getattr(built.processor, "images_kwargs", None))


def _text(folder: Path) -> Backbone:
    built = create_backbone("tiny_text")
    built.core.save_pretrained(folder)
    built.processor.tokenizer.save_pretrained(folder)
    return CausalLMBackbone(str(folder))


LOADERS = {
    "composed": lambda folder: _composed("tiny", folder),
    "composed_audio": lambda folder: _composed("tiny_audio", folder),
    "hf_vision_language": lambda folder: _hf("tiny_llava", folder),
    "hf_audio_language": lambda folder: _hf("tiny_qwen2_audio", folder),
    "causal_lm": _text,
}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_loaded_backbone_trains_in_train_mode(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = LOADERS[kind](tmp_path / kind)
    loaded_eval = [n for n, m in backbone.named_modules() if not m.training]
    module = EmoVerseModule(backbone, tasks=["msa"])
    still_eval = [n for n, m in module.named_modules() if not m.training]
    assert not still_eval, f"{kind}: {len(still_eval)} modules in eval mode, e.g. {still_eval[:3]}"
    if kind == "composed":  # the case the rule fixes: from_pretrained left the composed LLM in eval mode
        assert any(n.startswith("model.llm") for n in loaded_eval)
