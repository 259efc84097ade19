"""`Backbone`: the contract every MLLM backbone (vision encoder → projector → LLM) fulfils."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

Part = Literal["vision", "projector", "llm"]
_CONVERTIBLE_MODES = ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr")


@dataclass
class Processor:
    """The light, picklable half of a backbone that data workers need: text and image preprocessing.

    Attributes:
        tokenizer: a transformers tokenizer with a chat template.
        image_token: the placeholder string; the collator expands it to `tokens_per_image` ids per frame.
        tokens_per_image: visual tokens `encode_images` returns per frame.
        image_size: square input side of the vision encoder.
        mean, std: normalisation of the vision encoder.
        max_length: the LLM's context length (prompts beyond it are truncated, counted).
    """

    tokenizer: object
    image_token: str
    tokens_per_image: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_length: int

    def __post_init__(self) -> None:
        self._transform = v2.Compose([
            v2.ToImage(),
            v2.Resize((self.image_size, self.image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def pixel_values(self, images: Sequence[Image.Image], where: str = "") -> torch.Tensor:
        """Resize and normalise frames to `[N, 3, S, S]`.

        Any size is resized. Modes PIL converts losslessly to RGB (RGBA, L, P, CMYK, ...) are
        converted; others (16-bit, float) are rejected, naming `where` (the record).
        """
        out = []
        for k, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise TypeError(f"{where} frame {k}: expected a PIL image, got {type(img).__name__}")
            if img.mode != "RGB":
                if img.mode not in _CONVERTIBLE_MODES:
                    raise ValueError(f"{where} frame {k}: image mode {img.mode!r} cannot become RGB; "
                                     f"expected one of {_CONVERTIBLE_MODES}")
                img = img.convert("RGB")
            out.append(self._transform(img))
        return torch.stack(out)


class Backbone(nn.Module, ABC):
    """A multimodal LLM: `vision` encoder → `projector` → `llm`, plus its `processor`.

    Subclasses set the three parts and the processor in `__init__` and implement
    `encode_images` and `lora_target_modules`. The vision encoder is frozen by default,
    the projector trains and the LLM trains through LoRA adapters (added by EmoVerseModule).

    Attributes:
        vision: the vision encoder (frozen unless a curriculum stage trains it).
        projector: maps vision features to the LLM's embedding width (trained).
        llm: a transformers causal LM.
        processor: tokenizer and image preprocessing, handed to data workers.
    """

    vision: nn.Module
    projector: nn.Module
    llm: nn.Module
    processor: Processor

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map `[N, 3, S, S]` frames to `[N, tokens_per_image, llm_hidden]` visual tokens."""

    @abstractmethod
    def lora_target_modules(self) -> list[str]:
        """Names (peft `target_modules`) of the LLM's linear layers that get LoRA adapters."""

    def parts(self) -> dict[Part, nn.Module]:
        return {"vision": self.vision, "projector": self.projector, "llm": self.llm}

    def freeze(self, trainable: Sequence[Part] = ("projector",)) -> None:
        """Make exactly the parts in `trainable` trainable (LoRA weights are handled by the module)."""
        unknown = set(trainable) - set(self.parts())
        if unknown:
            raise ValueError(f"unknown backbone parts {sorted(unknown)}; expected some of {list(self.parts())}")
        for name, module in self.parts().items():
            module.requires_grad_(name in trainable)
