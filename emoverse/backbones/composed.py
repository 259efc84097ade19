"""`ComposedBackbone`: any timm vision encoder + a linear or MLP projector + any causal LM, and optionally a
transformers speech encoder (Whisper's encoder, HuBERT) with a projector of its own beside them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import v2
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from emoverse.backbones.base import Backbone, BackboneProcessor, Part, Sampling
from emoverse.backbones.composed_audio import AUDIO_TOKEN, AudioFrontEnd, encode_audio, load_audio_encoder
from emoverse.backbones.hf_vlm import packing_blocker
from emoverse.backbones.packing import crossing_blocker
from emoverse.backbones.processor import left_padded
from emoverse.backbones.quantization import Quantization, quantization_config

IMAGE_TOKEN = "<image>"


def build_projector(kind: Literal["linear", "mlp"], in_dim: int, out_dim: int, out_norm: float | None = None) -> nn.Module:
    """The paper's linear projector W_v, or LLaVA-1.5's two-layer MLP.

    Args:
        out_norm: initialise the last layer so that unit-variance inputs give outputs of about this
            L2 norm (the LLM's typical token-embedding norm). A projector trained from scratch at
            PyTorch's default init emits visual tokens several times the norm of the text
            embeddings, and dozens of them per frame then drown the text in every attention layer.
    """
    if kind == "linear":
        proj: nn.Module = nn.Linear(in_dim, out_dim)
    elif kind == "mlp":
        proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    else:
        raise ValueError(f"projector={kind!r}; expected 'linear' or 'mlp'")
    if out_norm is not None:
        last = proj if isinstance(proj, nn.Linear) else proj[-1]
        nn.init.zeros_(last.bias)
        with torch.no_grad():  # measure on a fixed unit-variance probe, then rescale the last layer
            probe = torch.randn(256, in_dim, generator=torch.Generator().manual_seed(0))
            last.weight.mul_(out_norm / proj(probe.to(last.weight.dtype)).norm(dim=-1).mean())
    return proj


class ComposedProcessor(BackboneProcessor):
    """Text through the LLM tokenizer's chat template, each frame as `tokens_per_image` placeholder ids,
    frames resized to the encoder's square input and normalised; with `audio`, each clip as its token count of
    `audio_token` ids (`AudioFrontEnd.tokens`: by duration) and its encoder features.

    Args:
        tokenizer: a transformers tokenizer with a chat template and `image_token` in its vocabulary.
        image_token: the placeholder; `encode` expands it to `tokens_per_image` ids per frame.
        tokens_per_image: visual tokens the projector emits per frame.
        image_size: square input side of the vision encoder.
        mean, std: normalisation of the vision encoder.
        max_length: the LLM's context length.
        audio: the audio encoder's front end (features and token counts), or None for frames alone.
        audio_token: the audio placeholder (in the tokenizer's vocabulary when `audio` is given).
    """

    def __init__(self, tokenizer: Any, image_token: str, tokens_per_image: int, image_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], max_length: int, audio: AudioFrontEnd | None = None,
                 audio_token: str = AUDIO_TOKEN) -> None:
        self.tokenizer, self.image_token, self.tokens_per_image = tokenizer, image_token, tokens_per_image
        self.image_size, self.max_length = image_size, max_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.audio, self.audio_token = audio, audio_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token) if audio is not None else None
        self.transform = v2.Compose([
            v2.ToImage(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset({"image", "audio"} if self.audio is not None else {"image"})

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        flat = []
        for m in messages:
            parts = m["content"]
            if isinstance(parts, str):
                flat.append({"role": m["role"], "content": parts})
                continue
            images = sum(p["type"] == "image" for p in parts)
            sounds = sum(p["type"] == "audio" for p in parts)
            text = "".join(p.get("text") or "" for p in parts)
            media = self.image_token * images + ("\n" if images else "") + self.audio_token * sounds + ("\n" if sounds else "")
            flat.append({"role": m["role"], "content": media + text})
        return self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, texts: list[str], images: list[list[Image.Image]], *, videos: Sequence[Any] | None = None,
               audios: Sequence[np.ndarray | None] | None = None) -> dict[str, torch.Tensor]:
        if videos is not None and any(v is not None for v in videos):
            raise ValueError("ComposedProcessor takes no video: give the frames as images (as_video False)")
        clips = [a for a in audios or [] if a is not None]
        if clips and self.audio is None:
            raise ValueError("ComposedProcessor has no audio encoder: build ComposedBackbone with audio=...")
        values, spans = self.audio(clips) if clips else (None, None)
        counts = iter(spans[:, 2].tolist() if clips else [])
        rows = []
        for row, (text, imgs) in enumerate(zip(texts, images, strict=True)):
            tokens = self.tokenize(text)
            clip = audios is not None and audios[row] is not None
            if tokens.count(self.audio_token_id) != int(clip):
                raise ValueError(f"row {row}: prompt has {tokens.count(self.audio_token_id)} audio slots but "
                                 f"{int(clip)} clips were given")
            ids = []
            for t in tokens:
                ids.extend([t] * self.tokens_per_image if t == self.image_token_id
                           else [t] * next(counts) if t == self.audio_token_id else [t])
            if ids.count(self.image_token_id) != len(imgs) * self.tokens_per_image:
                raise ValueError(f"prompt has {ids.count(self.image_token_id) // self.tokens_per_image} image slots "
                                 f"but {len(imgs)} frames were given")
            rows.append(ids)
        out = left_padded(rows, self.pad_id)
        frames = [self.transform(img) for imgs in images for img in imgs]
        if frames:
            out["pixel_values"] = torch.stack(frames)
        if clips:
            out["audio_values"], out["audio_spans"] = values, spans
        return out


class ComposedModel(nn.Module):
    """Vision encoder → projector → causal LM, with the projected frames scattered into the image slots; with an
    `audio` encoder, its pooled frames → `audio_projector` → the audio slots."""

    def __init__(self, vision: nn.Module, projector: nn.Module, llm: PreTrainedModel, image_token_id: int,
                 pool: int = 1, audio: nn.Module | None = None, audio_projector: nn.Module | None = None,
                 audio_token_id: int | None = None) -> None:
        super().__init__()
        self.vision, self.projector, self.llm = vision, projector, llm
        self.image_token_id, self.pool = image_token_id, pool
        if audio is not None:
            self.audio, self.audio_projector, self.audio_token_id = audio, audio_projector, audio_token_id

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, 3, S, S]` frames → `[N, tokens_per_image, llm_hidden]` visual tokens."""
        feats = self.vision.forward_features(pixel_values)
        feats = feats[:, getattr(self.vision, "num_prefix_tokens", 0):]
        if self.pool > 1:
            n, t, c = feats.shape
            g = int(t**0.5)
            grid = feats.transpose(1, 2).reshape(n, c, g, g)
            feats = nn.functional.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return self.projector(feats.to(next(self.projector.parameters()).dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              audio_values: torch.Tensor | None = None, audio_spans: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the projected visual tokens in the image placeholders and the projected audio
        tokens in the audio placeholders."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        if audio_values is not None:
            if not hasattr(self, "audio"):
                raise ValueError("batch has audio_values but this model has no audio encoder")
            sound = encode_audio(self.audio, audio_values, audio_spans)
            sound = self.audio_projector(sound.to(next(self.audio_projector.parameters()).dtype))
            slots = (input_ids == self.audio_token_id).unsqueeze(-1)
            if sound.shape[0] != int(slots.sum()):
                raise ValueError(f"{sound.shape[0]} audio tokens do not fill the batch's {int(slots.sum())} audio "
                                 "placeholders")
            embeds = embeds.masked_scatter(slots, sound.to(embeds.dtype))
        slots = input_ids == self.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"batch has {n_slots} image placeholder tokens but no pixel_values")
            return embeds
        visual = self.encode_images(pixel_values)
        if visual.shape[0] * visual.shape[1] != n_slots:
            raise ValueError(f"{visual.shape[0]} frames x {visual.shape[1]} visual tokens do not fill the batch's "
                             f"{n_slots} image placeholders")
        return embeds.masked_scatter(slots.unsqueeze(-1), visual.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, audio_values: torch.Tensor | None = None,
                audio_spans: torch.Tensor | None = None, **kwargs: Any) -> Any:
        # a packed row comes without attention_mask and with per-example position_ids (in kwargs): the LLM
        # then builds a block-causal mask from the positions (transformers' packed-sequence detection)
        embeds = self.embed(input_ids, pixel_values, audio_values, audio_spans)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 audio_values: torch.Tensor | None = None, audio_spans: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """The LLM's `generate` on the embedded prompt; returns the prompt ids and the new ones, as
        transformers' VLMs do."""
        embeds = self.embed(input_ids, pixel_values, audio_values, audio_spans)
        new = self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new], dim=1)


    @torch.no_grad()
    def generate_groups(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, group: int,
                        pixel_values: torch.Tensor | None = None, audio_values: torch.Tensor | None = None,
                        audio_spans: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """`group` continuations of each prompt, the prompt embedded and prefilled once (`Backbone.sample_groups`):
        the new token ids `[prompts x group, T]`."""
        embeds = self.embed(input_ids, pixel_values, audio_values, audio_spans)
        first = self.llm.generate(inputs_embeds=embeds[:, :-1], attention_mask=attention_mask[:, :-1], max_new_tokens=1,
                                  do_sample=False, use_cache=True, return_dict_in_generate=True,
                                  pad_token_id=kwargs.get("pad_token_id"))
        cache = first.cache
        cache.batch_repeat_interleave(group)
        return self.llm.generate(inputs_embeds=embeds.repeat_interleave(group, 0),
                                 attention_mask=attention_mask.repeat_interleave(group, 0), cache=cache, **kwargs)


class ComposedBackbone(Backbone):
    """Vision encoder (timm) → projector → causal LM (transformers), assembled by injection.

    Args:
        vision: a timm model name (random weights unless `vision_pretrained`) or a timm model.
        llm: a local path or hub id of a causal LM, or a loaded `PreTrainedModel`.
        tokenizer: the tokenizer when `llm` is a model (loaded with the LLM when `llm` is a path).
        projector: "linear" (the paper's Figure 3) or "mlp".
        pool: average-pool the patch grid by this factor to cut visual tokens per frame.
        vision_pretrained: load the timm weights (`vision` must then name a pretrained tag).
        vision_kwargs: extra timm `create_model` arguments (img_size, depth, ...).
        dtype: torch dtype name for the LLM weights, e.g. "bfloat16".
        quantization: "4bit" (NF4, double quantization) / "8bit" bitsandbytes LLM weights (QLoRA).
        trust_remote_code: explicit opt-in for hub models that ship their own code.
        max_length: context length; default: the LLM config's `max_position_embeddings`.
        audio: a speech encoder beside the vision encoder: a local path or hub id of a transformers Whisper
            (its encoder is taken) or HuBERT-style checkpoint, loaded with its feature extractor, or a built encoder
            (a `WhisperEncoder`, `HubertModel`, ...) with `audio_feature_extractor`. It stays frozen; its own
            projector (of kind `projector`, trained with "projector") maps it into the LLM.
        audio_feature_extractor: the encoder's feature extractor when `audio` is a model.
        audio_tokens_per_second: audio tokens per second of sound (the encoder's frames are average-pooled
            to it; Whisper's and HuBERT's encoders give 50 per second).
    """

    def __init__(
        self,
        vision: str | nn.Module,
        llm: str | PreTrainedModel,
        tokenizer: Any = None,
        projector: Literal["linear", "mlp"] = "linear",
        pool: int = 1,
        vision_pretrained: bool = False,
        vision_kwargs: dict[str, Any] | None = None,
        dtype: str | None = None,
        quantization: Quantization | None = None,
        trust_remote_code: bool = False,
        max_length: int | None = None,
        audio: str | nn.Module | None = None,
        audio_feature_extractor: Any = None,
        audio_tokens_per_second: float = 12.5,
    ) -> None:
        super().__init__()
        self._build_args = {"vision": vision if isinstance(vision, str) else None,
                            "vision_kwargs": dict(vision_kwargs or {}), "projector": projector, "pool": pool,
                            "audio_tokens_per_second": audio_tokens_per_second}
        if isinstance(audio, str):
            audio, audio_feature_extractor = load_audio_encoder(audio, trust_remote_code)
        elif audio is not None and audio_feature_extractor is None:
            raise ValueError("ComposedBackbone: `audio_feature_extractor` is required when `audio` is a model, not a path")
        if isinstance(vision, str):
            vision = timm.create_model(vision, pretrained=vision_pretrained, num_classes=0, **(vision_kwargs or {}))
        if isinstance(llm, str):
            kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
            if dtype is not None:
                kwargs["dtype"] = getattr(torch, dtype)
            if quantization is not None:
                kwargs["quantization_config"] = quantization_config(quantization, dtype)
            llm = AutoModelForCausalLM.from_pretrained(llm, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(llm.name_or_path, trust_remote_code=trust_remote_code)
        elif tokenizer is None:
            raise ValueError("ComposedBackbone: `tokenizer` is required when `llm` is a model, not a path")
        if pool < 1:
            raise ValueError(f"ComposedBackbone: pool={pool}; expected an integer >= 1")
        missing = [t for t in (IMAGE_TOKEN, *([AUDIO_TOKEN] if audio is not None else [])) if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
            llm.resize_token_embeddings(len(tokenizer))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.chat_template is None:
            raise ValueError(f"ComposedBackbone: tokenizer {type(tokenizer).__name__} has no chat template; "
                             "set `tokenizer.chat_template` (a Jinja string) before building the backbone")
        embeddings = llm.get_input_embeddings().weight
        text_norm = float(embeddings.detach().float().norm(dim=-1).median())
        proj = build_projector(projector, vision.num_features, embeddings.shape[1], out_norm=text_norm)
        size = _input_size(vision)
        grid = size // _patch_size(vision)
        if grid % pool:
            raise ValueError(f"ComposedBackbone: pool={pool} does not divide the {grid}x{grid} patch grid")
        cfg = getattr(vision, "pretrained_cfg", {}) or {}
        front = None if audio is None else AudioFrontEnd(audio_feature_extractor, audio_tokens_per_second)
        self.processor = ComposedProcessor(
            tokenizer, IMAGE_TOKEN, tokens_per_image=(grid // pool) ** 2, image_size=size,
            mean=tuple(cfg.get("mean", (0.5, 0.5, 0.5))), std=tuple(cfg.get("std", (0.5, 0.5, 0.5))),
            max_length=max_length or llm.config.max_position_embeddings, audio=front,
        )
        self.processor.packing_blocker = packing_blocker(llm) or crossing_blocker(llm)
        sound: dict[str, Any] = {}
        if audio is not None:
            audio.train()  # from_pretrained returns eval mode; dropout follows the module's mode like the rest
            sound = {"audio": audio, "audio_token_id": self.processor.audio_token_id,
                     "audio_projector": build_projector(projector, audio.config.hidden_size, embeddings.shape[1],
                                                        out_norm=text_norm)}
        self.model = ComposedModel(vision, proj, llm, self.processor.image_token_id, pool, **sound)
        self._decoder = next(n for n, m in llm.named_modules() if m is llm.get_decoder())
        self.set_trainable(["projector"])

    def sample_groups(self, once: Mapping[str, torch.Tensor], group: int, max_new_tokens: int,
                      sampling: Sampling) -> torch.Tensor:
        """As `Backbone.sample_groups`, on the LLM's `generate` from the embedded prompts (`ComposedModel.generate_groups`)."""
        return self.core.generate_groups(**self.cast_inputs(once), group=group, max_new_tokens=max_new_tokens,
                                         use_cache=True, **self.sampling_kwargs(sampling))

    def part_paths(self) -> dict[Part, str | tuple[str, ...]]:
        if hasattr(self.core, "audio"):
            return {"vision": "vision", "audio": "audio", "projector": ("projector", "audio_projector"),
                    "language_model": f"llm.{self._decoder}"}
        return {"vision": "vision", "projector": "projector", "language_model": f"llm.{self._decoder}"}

    @property
    def build_args(self) -> dict[str, Any]:
        """How the encoder and projector were made (a copy): timm name (None when given a model) and
        `vision_kwargs`, projector kind, pool, audio tokens per second; an export records them so it can be
        rebuilt."""
        return {**self._build_args, "vision_kwargs": dict(self._build_args["vision_kwargs"])}

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the language model with LoRA merged and its tokenizer (a folder `AutoModelForCausalLM`
        loads), plus `projector.safetensors` and `vision.safetensors`; with audio, the encoder and its feature
        extractor in `audio/` (a `from_pretrained` folder) and `audio_projector.safetensors`."""
        out = Path(out_dir)
        model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        model.llm.save_pretrained(out, safe_serialization=True)
        self.processor.tokenizer.save_pretrained(out)
        names = ("projector", "vision", *(("audio_projector",) if hasattr(model, "audio") else ()))
        for name in names:
            weights = {k: v.detach().cpu().contiguous() for k, v in getattr(model, name).state_dict().items()}
            save_file(weights, str(out / f"{name}.safetensors"))
        if hasattr(model, "audio"):
            model.audio.save_pretrained(out / "audio", safe_serialization=True)  # export.AUDIO_DIR
            self.processor.audio.extractor.save_pretrained(out / "audio")


def _input_size(vision: nn.Module) -> int:
    size = getattr(vision, "patch_embed", None) and vision.patch_embed.img_size
    if not size:
        raise ValueError(f"vision encoder {type(vision).__name__} exposes no patch_embed.img_size; "
                         "subclass Backbone for encoders that are not ViTs")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _patch_size(vision: nn.Module) -> int:
    patch = vision.patch_embed.patch_size
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)
