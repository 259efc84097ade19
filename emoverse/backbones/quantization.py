"""bitsandbytes weight quantization for QLoRA: 4-bit NF4 with double quantization, or 8-bit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

Quantization = Literal["4bit", "8bit"]


def quantization_config(kind: Quantization, dtype: str | None = None, skip: Sequence[str] = ()) -> Any:
    """A transformers `BitsAndBytesConfig`: NF4 + double quantization with `dtype` compute (bf16 by
    default) for "4bit", LLM.int8 for "8bit"; modules named in `skip` stay unquantized."""
    from transformers import BitsAndBytesConfig

    if kind not in ("4bit", "8bit"):
        raise ValueError(f"quantization={kind!r}; expected '4bit' or '8bit'")
    compute = getattr(torch, dtype) if dtype else torch.bfloat16
    skip_modules = list(skip) or None
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                  bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
