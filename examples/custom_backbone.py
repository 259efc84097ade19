"""A user-defined backbone: a small CNN vision encoder → linear projector → a Llama-style LLM.

Train it with the quickstart config by changing only the backbone entry (docs/backbones.md):

    model:
      init_args:
        backbone:
          class_path: custom_backbone.ConvBackbone
          init_args: {channels: 32}

and `PYTHONPATH=examples emoverse fit --config my_quickstart.yaml`. docs/backbones.md shows this file's code
(a test checks that the two agree and runs it).

The class sets `model` and `processor` and implements the one abstract method of
`emoverse.backbones.Backbone`, `part_paths`; it reuses emoverse's composed pieces for the
placeholder scatter and the image preprocessing, whose model follows the transformers calling
convention, so `Backbone`'s default `logits` and `generate_ids` apply.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from emoverse.backbones import Backbone, register_backbone
from emoverse.backbones.composed import ComposedModel, ComposedProcessor
from emoverse.backbones.tiny import tiny_tokenizer


class ConvEncoder(nn.Module):
    """Two strided convolutions: a frame of side S becomes (S/16)² feature vectors."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, channels, 4, stride=4), nn.GELU(), nn.Conv2d(channels, channels, 4, stride=4))

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:  # the method ComposedModel calls
        return self.net(pixel_values).flatten(2).transpose(1, 2)            # [N, tokens, channels]


class ConvBackbone(Backbone):
    """A CNN encoder → linear projector → causal LM.

    Args:
        image_size: frame side in pixels (a multiple of 16).
        channels: CNN width.
        llm_path: a local path or hub id of a causal LM with a chat template; None builds a tiny
            random Llama (for trying the recipe offline).
    """

    def __init__(self, image_size: int = 64, channels: int = 32, llm_path: str | None = None) -> None:
        super().__init__()
        if llm_path is None:
            tokenizer = tiny_tokenizer()
            llm = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=True, initializer_range=0.1,
            ))
        else:
            llm, tokenizer = AutoModelForCausalLM.from_pretrained(llm_path), AutoTokenizer.from_pretrained(llm_path)
            tokenizer.add_tokens(["<image>"], special_tokens=True)
            llm.resize_token_embeddings(len(tokenizer))
        self.processor = ComposedProcessor(
            tokenizer, "<image>", tokens_per_image=(image_size // 16) ** 2, image_size=image_size,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), max_length=llm.config.max_position_embeddings,
        )
        projector = nn.Linear(channels, llm.config.hidden_size)
        self.model = ComposedModel(ConvEncoder(channels), projector, llm, self.processor.image_token_id)
        self.set_trainable(["projector"])

    def part_paths(self) -> dict[str, str]:
        # by module path: LoRA goes only on linear layers under "llm.model"
        return {"vision": "vision", "projector": "projector", "language_model": "llm.model"}


@register_backbone
def conv_small(channels: int = 32, **kwargs: Any) -> ConvBackbone:
    """`ConvBackbone` by name; overrides such as `channels=16` replace the defaults."""
    return ConvBackbone(channels=channels, **kwargs)
