"""`HFVisionLanguageBackbone`: any vision-language model `transformers.AutoModelForImageTextToText` loads.

The model's own processor and chat template build its inputs (image wrappers such as InternVL's
`<img>…</img>`, per-image token counts that vary with the image size, Qwen2-VL's `image_grid_thw`),
and the model's own `forward` places the visual tokens and computes positions (M-RoPE included).
emoverse adds only what is task-specific: the response labels, the loss at response positions,
LoRA on the language model, and which parts train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from emoverse.backbones.base import Backbone, BackboneProcessor, Part
from emoverse.backbones.quantization import Quantization, quantization_config


class HFProcessor(BackboneProcessor):
    """A transformers multimodal processor (`AutoProcessor`) behind the `BackboneProcessor` hooks.

    Args:
        processor: the model's processor (tokenizer + image processor + chat template).
        max_length: the context length.
        images_kwargs: extra arguments for its image processor, e.g. `{"crop_to_patches": False}`.
    """

    def __init__(self, processor: Any, max_length: int, images_kwargs: dict[str, Any] | None = None) -> None:
        self.processor, self.max_length = processor, max_length
        self.tokenizer = processor.tokenizer
        self.images_kwargs = dict(images_kwargs or {})
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"{type(processor).__name__} has no chat template; set processor.chat_template "
                             "(a Jinja string rendering {'type': 'image'} content items) before building the backbone")

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, texts: list[str], images: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "left",
                                  "add_special_tokens": False, **self.images_kwargs}
        if any(images):
            kwargs["images"] = images
        return dict(self.processor(**kwargs))


class HFVisionLanguageBackbone(Backbone):
    """A transformers-native vision-language model (LLaVA, LLaVA-NeXT/OneVision, Qwen2-VL, Qwen2.5-VL,
    InternVL, Idefics3/SmolVLM, ...) with its own processor.

    Args:
        model: a local path or hub id given explicitly, or a loaded model.
        processor: the model's processor when `model` is a model (loaded with it when `model` is a path).
        dtype: torch dtype name for the weights, e.g. "bfloat16".
        quantization: "4bit" (NF4, double quantization) / "8bit" bitsandbytes weights for the language
            model (QLoRA); the vision encoder and projector stay unquantized.
        trust_remote_code: explicit opt-in for checkpoints that ship their own code.
        max_length: context length; default: the text config's `max_position_embeddings`.
        parts: module paths overriding the derived ones, e.g. `{"projector": "model.connector"}`.
        images_kwargs: extra image-processor arguments (see `HFProcessor`).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        processor: Any = None,
        dtype: str | None = None,
        quantization: Quantization | None = None,
        trust_remote_code: bool = False,
        max_length: int | None = None,
        parts: dict[str, str] | None = None,
        images_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            model, processor = _load(model, dtype, quantization, trust_remote_code)
        elif processor is None:
            raise ValueError("HFVisionLanguageBackbone: `processor` is required when `model` is a model, not a path")
        model.train()  # from_pretrained returns eval mode, which would silently switch dropout off
        self.model = model
        text_config = model.config.get_text_config()
        self.processor = HFProcessor(processor, max_length or text_config.max_position_embeddings, images_kwargs)
        self._paths = {**_derive_parts(model), **(parts or {})}
        for name, path in self._paths.items():
            try:
                model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"HFVisionLanguageBackbone: parts[{name!r}]={path!r} is not a module of "
                                 f"{type(model).__name__}") from None
        self.set_trainable(["projector"])

    def part_paths(self) -> dict[Part, str]:
        return dict(self._paths)  # type: ignore[arg-type]

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the model (LoRA merged, if any) and its processor as a folder `from_pretrained` loads."""
        model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        model.save_pretrained(out_dir, safe_serialization=True)
        self.processor.processor.save_pretrained(out_dir)


def _load(path: str, dtype: str | None, quantization: Quantization | None,
          trust_remote_code: bool) -> tuple[PreTrainedModel, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        if quantization is not None:
            # only the language model is quantized: the vision encoder, projector and output head keep full
            # precision; their paths come from a weightless (meta) instance of the same architecture
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            with torch.device("meta"):
                paths = _derive_parts(AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code))
            kwargs["quantization_config"] = quantization_config(
                quantization, dtype, skip=[paths["vision"], paths["projector"], "lm_head"])
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise ValueError(f"{path!r} is not a vision-language model AutoModelForImageTextToText can load "
                             f"({err.args[0].splitlines()[0]}); for a text-only LLM use ComposedBackbone") from None
        raise
    except OSError as err:
        raise OSError(f"cannot load a vision-language model from {path!r}: expected a local folder with "
                      f"config.json or a hub id ({err})") from None
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, processor


def _derive_parts(model: PreTrainedModel) -> dict[str, str]:
    """Vision encoder and language model as transformers names them (`get_encoder("image")`,
    `get_decoder()`); the projector is the base model's remaining child with weights, or, where the
    vision encoder ends in its own merger (Qwen2-VL), the encoder's last child."""
    names = {id(m): n for n, m in model.named_modules()}
    vision, language = model.get_encoder(modality="image"), model.get_decoder()
    if vision is model or language is model:
        raise ValueError(f"{type(model).__name__}: cannot find its vision encoder and language model; "
                         "pass parts={'vision': ..., 'projector': ..., 'language_model': ...}")
    base = model.get_submodule(names[id(vision)].rpartition(".")[0]) if "." in names[id(vision)] else model
    others = [m for m in base.children() if m is not vision and m is not language
              and not isinstance(m, nn.Embedding) and any(True for _ in m.parameters())]
    projector = others[0] if len(others) == 1 else list(vision.children())[-1]
    return {"vision": names[id(vision)], "projector": names[id(projector)], "language_model": names[id(language)]}
