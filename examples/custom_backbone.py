"""A user-defined backbone: a small CNN vision encoder → linear projector → a Llama-style LLM.

Train it with the quickstart config by changing only the backbone entry (docs/backbones.md):

    model:
      init_args:
        backbone:
          class_path: custom_backbone.ConvBackbone
          init_args: {channels: 32}

and `PYTHONPATH=examples emoverse fit --config my_quickstart.yaml`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from emoverse.backbones import Backbone, Processor
from emoverse.backbones.tiny import tiny_tokenizer


class ConvBackbone(Backbone):
    """Two strided convolutions turn each frame into a (side/16)² grid of visual tokens.

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
            from emoverse.backbones.composed import load_llm

            llm, tokenizer = load_llm(llm_path)
        self.vision = nn.Sequential(nn.Conv2d(3, channels, 4, stride=4), nn.GELU(),
                                    nn.Conv2d(channels, channels, 4, stride=4))
        self.projector = nn.Linear(channels, llm.config.hidden_size)
        self.llm = llm
        self.processor = Processor(
            tokenizer=tokenizer, image_token="<image>", tokens_per_image=(image_size // 16) ** 2,
            image_size=image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
            max_length=llm.config.max_position_embeddings,
        )
        self.freeze(("projector",))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = self.vision(pixel_values)                      # [N, C, side/16, side/16]
        return self.projector(grid.flatten(2).transpose(1, 2))  # [N, tokens, hidden]

    def lora_target_modules(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "o_proj"]
