"""`HFVisionLanguageBackbone`: a multimodal LM `transformers.AutoModelForMultimodalLM` loads (the image-text-to-text
models plus the audio-capable ones), trained on frames, video, audio and text.

The model's own processor and chat template build its inputs (image wrappers such as InternVL's
`<img>…</img>`, per-image token counts that vary with the image size, Qwen2-VL's `image_grid_thw`, audio
placeholders repeated per clip duration and the log-mel features of the model's feature extractor), and the
model's own `forward` places the visual and audio tokens and computes positions (M-RoPE included).
emoverse adds only what is task-specific: the response labels, the loss at response positions,
LoRA on the language model, and which parts train.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForMultimodalLM, AutoProcessor, PreTrainedModel

from emoverse.backbones.base import Backbone, BackboneProcessor, Part
from emoverse.backbones.media import SAMPLE_RATE, video_array
from emoverse.backbones.packing import (
    mask_blocker,
    packed_rope_positions,
    rope_index_blocker,
    rope_index_path,
    rope_positions,
)
from emoverse.backbones.processor import media_part
from emoverse.backbones.quantization import Quantization, quantization_config


class HFProcessor(BackboneProcessor):
    """A transformers multimodal processor (`AutoProcessor`) behind the `BackboneProcessor` hooks.

    Args:
        processor: the model's processor (tokenizer + image processor + chat template).
        max_length: the context length.
        images_kwargs: extra arguments for its image processor, e.g. `{"crop_to_patches": False}`.
        model: the model the inputs are for: `encode` keeps only the inputs its `forward` names (not `labels`,
            the loss is the contract's), the stop tokens include its `generation_config.eos_token_id`, and
            per-token inputs are extended to the response by its generation rule. Only its class and
            generation config are kept (the processor goes to data workers without the weights).
    """

    def __init__(self, processor: Any, max_length: int, images_kwargs: dict[str, Any] | None = None,
                 model: PreTrainedModel | None = None) -> None:
        self.processor, self.max_length = processor, max_length
        self.tokenizer = processor.tokenizer
        self.images_kwargs = dict(images_kwargs or {})
        self.input_names: frozenset[str] | None = None
        hears = True
        if model is not None:
            self.generation_rule = type(model)
            self.input_names = forward_inputs(model)
            eos = model.generation_config.eos_token_id
            self.generation_eos = tuple(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
            hears = model.get_encoder(modality="audio") is not model
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"{type(processor).__name__} has no chat template; set processor.chat_template "
                             "(a Jinja string rendering {'type': 'image'} content items) before building the backbone")
        extractor = getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)
        rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
        if extractor is not None and hears and rate != SAMPLE_RATE:
            raise ValueError(f"{type(extractor).__name__} expects {rate} Hz audio; emoverse gives {SAMPLE_RATE} Hz: "
                             f"set its sampling_rate to {SAMPLE_RATE} or resample the clips before the backbone")
        self._modalities = frozenset(
            m for m, has in (("image", getattr(processor, "image_processor", None) is not None),
                             ("video", getattr(processor, "video_processor", None) is not None),
                             ("audio", extractor is not None and hears)) if has and self._template_renders(m))

    @property
    def modalities(self) -> frozenset[str]:
        """The media the processor has a sub-processor for, the model an encoder for and the chat template a
        placeholder for (a `{"type": "video"}` / `{"type": "audio", "audio": None}` part that it renders)."""
        return self._modalities

    def _template_renders(self, kind: str) -> bool:
        # by what the template writes, not by the processor's token: some write a start marker that the processor
        # expands (Gemma 3's `<start_of_image>` for `<image_soft_token>`s)
        text = [{"type": "text", "text": "q"}]
        try:
            plain = self.render([{"role": "user", "content": text}], add_generation_prompt=True)
            rendered = self.render([{"role": "user", "content": [media_part(kind), *text]}], add_generation_prompt=True)
        except Exception:  # a template that rejects the part type does not take it
            return False
        return rendered != plain

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, texts: list[str], images: list[list[Image.Image]], *,
               videos: list[list[Image.Image] | None] | None = None,
               audios: list[np.ndarray | None] | None = None) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "left",
                                  "add_special_tokens": False, **self.images_kwargs}
        if any(images):
            kwargs["images"] = images
        clips = [a for a in audios or [] if a is not None]
        if clips:  # the processor's `audio`, one clip per placeholder in order; the rate said, never assumed
            kwargs["audio"], kwargs["sampling_rate"] = clips, SAMPLE_RATE
        movies = [video_array(v, i) for i, v in enumerate(videos or []) if v is not None]
        if movies:
            kwargs["videos"] = movies
        out = dict(self.processor(**kwargs))
        if self.input_names is None:
            return out
        unused = sorted(set(out) - self.input_names - {"labels"})
        if unused:
            warnings.warn(f"{type(self.processor).__name__} returns {unused}, which "
                          f"{self.generation_rule.__name__}.forward does not take: dropped", stacklevel=2)
        return {k: v for k, v in out.items() if k in self.input_names}


def packing_blocker(model: nn.Module) -> str | None:
    """Why `model` cannot train on packed rows (`BackboneProcessor.pack`), or None.

    Packed rows need the model to take `position_ids` and to keep its attention mask per example
    (`packing.mask_blocker`); a model that computes multi-dimensional rotary positions from the whole row itself
    (Qwen2-VL's M-RoPE and its relatives, `get_rope_index`) gets them computed per example
    (`packing.packed_rope_positions`), which needs every argument of its `get_rope_index` from its inputs.
    """
    names = forward_inputs(model)
    if "position_ids" not in names:
        return f"{type(model).__name__}.forward takes no position_ids"
    path = rope_index_path(model)
    return mask_blocker(model, names) or (None if path is None else rope_index_blocker(model.get_submodule(path), names))


def forward_inputs(model: nn.Module) -> frozenset[str]:
    """The inputs a model's `forward` names, less those the contract owns (`labels`: emoverse computes the loss;
    PaliGemma's processor returns labels and its forward would compute a loss of its own)."""
    params = inspect.signature(type(model).forward).parameters.values()
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) - {"self", "labels"}


class HFVisionLanguageBackbone(Backbone):
    """A transformers-native multimodal LM (`AutoModelForMultimodalLM`) with its own processor; the families
    tested are listed in docs/backbones.md.

    Args:
        model: a local path or hub id given explicitly, or a loaded model.
        processor: the model's processor when `model` is a model (loaded with it when `model` is a path).
        dtype: torch dtype name for the weights, e.g. "bfloat16".
        quantization: "4bit" (NF4, double quantization) / "8bit" bitsandbytes weights for the language
            model (QLoRA); the vision and audio encoders and the projectors stay unquantized.
        trust_remote_code: explicit opt-in for checkpoints that ship their own code.
        max_length: context length; default: the text config's `max_position_embeddings`.
        parts: module paths overriding the derived ones ("vision", "audio", "projector", "language_model"), e.g.
            `{"projector": "model.connector"}`; a list of paths for a part made of several modules (the projector
            of a model with vision and audio is its vision projector(s) and its audio projector).
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
        parts: dict[str, str | list[str]] | None = None,
        images_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            model, processor = _load(model, dtype, quantization, trust_remote_code)
        elif processor is None:
            raise ValueError("HFVisionLanguageBackbone: `processor` is required when `model` is a model, not a path")
        else:
            ignored = {k: v for k, v in (("dtype", dtype), ("quantization", quantization),
                                         ("trust_remote_code", trust_remote_code)) if v}
            if ignored:
                raise ValueError(f"HFVisionLanguageBackbone: {sorted(ignored)} apply only when loading from a path or hub "
                                 "id; this model is already built: set them when you build it, or pass its path")
        model.train()  # from_pretrained returns eval mode, which would silently switch dropout off
        self.model = model
        text_config = model.config.get_text_config()
        self.processor = HFProcessor(processor, max_length or text_config.max_position_embeddings, images_kwargs,
                                     model)
        self.processor.packing_blocker = packing_blocker(model)
        self._rope_path = rope_index_path(model)  # a path, not the module: a second reference would register it twice
        given = {k: v if isinstance(v, str) else tuple(v) for k, v in (parts or {}).items()}
        unknown = sorted(set(given) - {"vision", "audio", "projector", "language_model"})
        if unknown:
            raise ValueError(f"HFVisionLanguageBackbone: parts {unknown} unknown; expected vision, audio, projector, "
                             "language_model")
        self._paths = {**derive_parts(model, given), **given}
        for name, path in self._paths.items():
            for one in (path,) if isinstance(path, str) else path:
                try:
                    model.get_submodule(one)
                except AttributeError:
                    raise ValueError(f"HFVisionLanguageBackbone: parts[{name!r}]={one!r} is not a module of "
                                     f"{type(model).__name__}") from None
        self.set_trainable(["projector"])

    def part_paths(self) -> dict[Part, str | tuple[str, ...]]:
        return dict(self._paths)  # type: ignore[arg-type]

    def packed_inputs(self, inputs: Mapping[str, torch.Tensor], lengths: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """As `Backbone.packed_inputs`; a model that computes its M-RoPE positions from the whole row (`get_rope_index`)
        gets those of each example on its own, with the plain per-example positions in front (`[4, 1, tokens]`,
        `packing.packed_rope_positions`)."""
        if self._rope_path is None:
            return inputs
        module = self.core.get_submodule(self._rope_path)
        return {**inputs, "position_ids": packed_rope_positions(module, inputs, lengths)}

    def group_sampling_unsupported(self) -> str | None:
        """As `Backbone.group_sampling_unsupported`: a model with its own M-RoPE positions keeps the prefill's
        per-prompt `rope_deltas`, which continuing on repeated prompts does not repeat."""
        if self._rope_path is not None:
            return (f"{type(self.core).__name__} keeps per-prompt M-RoPE offsets (rope_deltas) from its prefill, which a "
                    "repeated cache does not repeat")
        return super().group_sampling_unsupported()

    def shared_positions(self, prompts: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """As `Backbone.shared_positions`: the model's own `get_rope_index` of the left-padded prompts (each row's
        positions start at 0 at its first real token), or None for a model without one."""
        if self._rope_path is None:
            return None
        module = self.core.get_submodule(self._rope_path)
        return rope_positions(module, prompts)

    def logits(self, inputs: Mapping[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """As `Backbone.logits`; a model whose `forward` takes no `logits_to_keep` (Qwen2-Audio, the Qwen2.5-Omni
        thinker: it would be passed on and ignored) gives its full logits, cut to `keep` here."""
        if "logits_to_keep" in (self.processor.input_names or ()):
            return super().logits(inputs, keep)
        return self.core(**self.cast_inputs(inputs), use_cache=False).logits[:, keep]

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
                paths = derive_parts(AutoModelForMultimodalLM.from_config(config, trust_remote_code=trust_remote_code))
            skip = [p for part in ("vision", "audio", "projector") if part in paths for p in _as_tuple(paths[part])]
            kwargs["quantization_config"] = quantization_config(quantization, dtype, skip=[*skip, "lm_head"])
        model = AutoModelForMultimodalLM.from_pretrained(path, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise ValueError(f"{path!r} is not a vision-language model AutoModelForMultimodalLM can load "
                             f"({err.args[0].splitlines()[0]}); for a text-only LLM use ComposedBackbone") from None
        raise
    except OSError as err:
        raise OSError(f"cannot load a vision-language model from {path!r}: expected a local folder with "
                      f"config.json or a hub id ({err})") from None
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, processor


def _as_tuple(path: str | tuple[str, ...]) -> tuple[str, ...]:
    return (path,) if isinstance(path, str) else tuple(path)


PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "embed_vision", "merger",
                   "deepstack_merger_list")
"""The names transformers gives the modules that map vision features into the language model (as its own
`get_encoder` looks the encoders up by a list of names): LLaVA-style `multi_modal_projector`, Idefics3's
`connector`, Gemma 3n's `embed_vision`, the Qwen-VL / GLM-4V `merger` inside the vision encoder and
Qwen3-VL's DeepStack mergers (which feed inner vision features into the first decoder layers)."""


AUDIO_PROJECTOR_NAMES = ("multi_modal_projector", "audio_projector", "embed_audio", "proj")
"""The same for audio features: Qwen2-Audio's (and Voxtral's) `multi_modal_projector` beside the audio encoder, Gemma
3n's `embed_audio`, and the Qwen2.5-Omni audio encoder's own last layer `proj` (its width to the language model's)."""


def derive_parts(model: PreTrainedModel, given: dict[str, Any] | None = None) -> dict[str, str | tuple[str, ...]]:
    """Vision encoder, audio encoder and language model as transformers declares them (`get_encoder(modality=
    "image")`, `get_encoder(modality="audio")`, `get_decoder()`; a model needs one of the encoders), and the
    projector: for each encoder, the modules named in `PROJECTOR_NAMES` (vision) or `AUDIO_PROJECTOR_NAMES`
    (audio) beside it (children of the same base model) or inside it (its own children); a tuple of them where
    there are several. Parts in `given` are not derived.

    Raises:
        ValueError: a part cannot be derived; one line naming the candidates and the `parts=` to pass.
    """
    given = given or {}
    cls = type(model).__name__
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, str | tuple[str, ...]] = {}
    for part, module in (("vision", model.get_encoder(modality="image")), ("audio", model.get_encoder(modality="audio")),
                         ("language_model", model.get_decoder())):
        if part in given or module is not model:
            out[part] = given[part] if part in given else names[id(module)]
    missing = [p for p in ("vision", "language_model") if p not in out and not (p == "vision" and "audio" in out)]
    if missing:
        children = [n for n, _ in model.named_children()]
        raise ValueError(f"{cls}: transformers declares no {' or '.join(missing)} (get_encoder(modality='image') / "
                         f"get_decoder()); its children are {children}; pass parts={{{', '.join(repr(m) + ': ...' for m in missing)}}}")
    if "projector" in given:
        return out
    taken = {p for p in out.values() if isinstance(p, str)}
    found: list[str] = []
    for part, known in (("vision", PROJECTOR_NAMES), ("audio", AUDIO_PROJECTOR_NAMES)):
        if part not in out:
            continue
        encoder_path = out[part]
        encoder = model.get_submodule(encoder_path)
        base_path = encoder_path.rpartition(".")[0]
        base = model.get_submodule(base_path) if base_path else model
        beside = [(f"{base_path}.{n}" if base_path else n, m) for n, m in base.named_children()]
        beside = [(p, m) for p, m in beside if p not in taken]
        inside = [(f"{encoder_path}.{n}", m) for n, m in encoder.named_children()]
        hits = [p for p, m in beside + inside if p.rpartition(".")[2] in known and _weights(m) and p not in found]
        if not hits:
            candidates = [f"{p} ({_weights(m):,} parameters)" for p, m in beside + inside[-3:]
                          if _weights(m) and not isinstance(m, nn.Embedding)]
            raise ValueError(f"{cls}: no {part}-to-language projector among the module names transformers uses "
                             f"({', '.join(known)}); candidates: {', '.join(candidates) or 'none'}; pass "
                             f"parts={{'projector': [<module path of each projector>]}}")
        found += hits
    out["projector"] = found[0] if len(found) == 1 else tuple(found)
    return out


def _weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
