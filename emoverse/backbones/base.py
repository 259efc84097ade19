"""`Backbone`: the contract every multimodal LLM fulfils, and `BackboneProcessor`, its data half.

A backbone owns its multimodal inputs. Its processor turns examples (a task query, the frames it
shows, the response to learn) into model inputs with the model's own chat template and image
handling (image wrappers, variable visual token counts, extra tensors such as Qwen2-VL's
`image_grid_thw`); the backbone runs `forward` on them (logits at the response positions only)
and `generate`. It names its parts (vision encoder, projector, language model) by module path,
so trainability and LoRA targets are decided by path, never by a bare layer name that also
exists in the vision tower.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

Part = Literal["vision", "projector", "language_model"]
TRAIN_PARTS: tuple[str, ...] = ("projector", "lora", "vision")
IGNORE_INDEX = -100
_SENTINEL = "\x00EMOVERSE\x00"


class PromptTooLong(ValueError):
    """Row `row` of a batch has `tokens` tokens, more than the context of `max_length`."""

    def __init__(self, row: int, tokens: int, max_length: int) -> None:
        self.row, self.tokens, self.max_length = row, tokens, max_length
        super().__init__(f"row {row}: {tokens} tokens exceed the context of {max_length}")


class BackboneProcessor(ABC):
    """The light, picklable half of a backbone that data workers use: examples → model inputs.

    Subclasses implement two hooks, `render` (messages → prompt text through the chat template)
    and `encode` (prompt texts + frames → left-padded model inputs); this base class adds the
    response, masks the labels to it, pads, and measures prompts. It encodes only: which record and
    task a row is (the batch's metadata) is the collator's business (`emoverse.data.AMTCollator`).

    Attributes:
        tokenizer: the model's tokenizer.
        max_length: the context length; longer prompts must be shortened before batching.
    """

    tokenizer: Any
    max_length: int

    @abstractmethod
    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """Chat-template `messages` (content: a list of `{"type": "image"}` / `{"type": "text", ...}`)."""

    @abstractmethod
    def encode(self, texts: list[str], images: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
        """Tokenise rendered prompts and preprocess their frames, left-padded: `input_ids`,
        `attention_mask` and whatever vision tensors the model takes."""

    # shared ----------------------------------------------------------------------------------

    @staticmethod
    def messages(query: str, n_images: int, system_prompt: str | None = None,
                 response: str | None = None) -> list[dict[str, Any]]:
        """The conversation of one example: the frames first, then the query (the paper's [T_v; T_t])."""
        out: list[dict[str, Any]] = []
        if system_prompt:
            out.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
        out.append({"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": query}]})
        if response is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
        return out

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @functools.cached_property
    def end_ids(self) -> list[int]:
        """What the chat template writes after an assistant message (the end-of-turn marker, ...)."""
        full = self.render(self.messages("q", 0, response=_SENTINEL), add_generation_prompt=False)
        if _SENTINEL not in full:
            raise ValueError("the chat template must render the assistant message's content")
        return self.tokenize(full.rpartition(_SENTINEL)[2])

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a generated answer."""
        return sorted({self.tokenizer.eos_token_id, *self.end_ids[:1]} - {None})

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def prompt_length(self, query: str, images: Sequence[Image.Image], system_prompt: str | None = None) -> int:
        """Tokens of the prompt with `images` expanded to their visual tokens (without the response)."""
        text = self.render(self.messages(query, len(images), system_prompt), add_generation_prompt=True)
        return len(self.tokenize(text)) + self._images_extra(tuple(img.size for img in images))

    @functools.lru_cache(maxsize=256)  # noqa: B019  (processors live as long as their backbone)
    def _images_extra(self, sizes: tuple[tuple[int, int], ...]) -> int:
        """How many tokens images of `sizes` add to a prompt beyond their placeholder text (measured once
        per combination: some families treat several images differently from one, e.g. LLaVA-OneVision)."""
        text = self.render(self.messages("", len(sizes)), add_generation_prompt=True)
        expanded = self.encode([text], [[Image.new("RGB", size) for size in sizes]])["attention_mask"].sum()
        return int(expanded) - len(self.tokenize(text))

    def __call__(self, queries: Sequence[str], images: Sequence[Sequence[Image.Image]],
                 responses: Sequence[str] | None = None, system_prompt: str | None = None) -> dict[str, Any]:
        """Encode a batch: `inputs` (the model inputs of each query with its frames; with `responses`, the
        response and the end-of-turn marker appended, right-padded) and `labels` (the response tokens,
        -100 elsewhere; None without responses: left-padded prompts for generation).

        Raises:
            PromptTooLong: a row exceeds `max_length` (its index is `row`).
        """
        texts = [self.render(self.messages(q, len(imgs), system_prompt), add_generation_prompt=True)
                 for q, imgs in zip(queries, images, strict=True)]
        inputs = self.encode(texts, [list(imgs) for imgs in images])
        labels = None
        if responses is not None:
            inputs, labels = self._append_responses(inputs, [self.tokenize(r) + self.end_ids for r in responses])
        if inputs["input_ids"].shape[1] > self.max_length:
            lengths = inputs["attention_mask"].sum(1).tolist()
            worst = max(range(len(lengths)), key=lengths.__getitem__)
            raise PromptTooLong(worst, int(lengths[worst]), self.max_length)
        return {"inputs": inputs, "labels": labels}

    def _append_responses(self, inputs: dict[str, torch.Tensor], responses: list[list[int]]
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Left-padded prompts + responses → right-padded rows `[prompt; response]` and their labels.

        Every other per-token tensor the processor returned (e.g. `mm_token_type_ids`) follows the
        same layout, with zeros on the response tokens (plain text).
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        per_token = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape == ids.shape}
        lengths = [int(m.sum()) + len(r) for m, r in zip(mask, responses, strict=True)]
        width = max(lengths)
        out = {k: torch.zeros((len(ids), width), dtype=v.dtype) for k, v in per_token.items()}
        out["input_ids"].fill_(self.pad_id)
        labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        for b, resp in enumerate(responses):
            n = int(mask[b].sum())
            for k, v in per_token.items():
                out[k][b, :n] = v[b][mask[b]]
            out["input_ids"][b, n:n + len(resp)] = torch.tensor(resp, dtype=ids.dtype)
            out["attention_mask"][b, :n + len(resp)] = 1
            labels[b, n:n + len(resp)] = torch.tensor(resp)
        return {**inputs, **out}, labels


class Backbone(nn.Module, ABC):
    """A multimodal LLM: vision encoder → projector → language model, plus its `processor`.

    Subclasses set `model` (the whole network; LoRA wraps it) and `processor` in `__init__` and
    implement `part_paths`. `model` follows the transformers calling convention (`forward(**inputs,
    logits_to_keep=...)` returning `.logits`, `generate(**inputs, ...)` returning the prompt and the
    new tokens); a model that does not overrides `logits` and `generate_ids`. The vision encoder
    starts frozen, the projector trains and the language model trains through LoRA adapters
    (`add_lora`).

    Attributes:
        model: the network, a `peft.PeftModel` after `add_lora`.
        processor: turns examples into this model's inputs (handed to data workers).
    """

    model: nn.Module
    processor: BackboneProcessor

    @abstractmethod
    def part_paths(self) -> dict[Part, str]:
        """Module paths, inside the unwrapped `model`, of "vision", "projector" and "language_model"
        (the decoder stack without the output head)."""

    def logits(self, inputs: Mapping[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Logits `[B, len(keep), vocab]` at sequence positions `keep` (the positions predicting a
        response token), so the full-vocabulary projection runs only where the loss needs it.

        The default calls `core(**inputs, logits_to_keep=keep)`, the transformers convention.
        """
        return self.core(**self.cast_inputs(inputs), logits_to_keep=keep, use_cache=False).logits

    def generate_ids(self, inputs: Mapping[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        """Greedy, KV-cached generation from left-padded prompts: the new token ids `[B, T]`.

        The default calls `core.generate(**inputs, ...)`, the transformers convention (the output
        starts with the prompt).
        """
        proc = self.processor
        out = self.core.generate(**self.cast_inputs(inputs), max_new_tokens=max_new_tokens, do_sample=False,
                                 use_cache=True, eos_token_id=proc.stop_ids, pad_token_id=proc.pad_id)
        return out[:, inputs["input_ids"].shape[1]:]

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the model with LoRA merged as a folder `transformers` loads (`emoverse export`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement save_pretrained, so it cannot be exported")

    # parts, LoRA, trainability ---------------------------------------------------------------

    @property
    def core(self) -> nn.Module:
        """`model` without its peft wrapper (LoRA layers are injected in place)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if callable(get_base) else self.model

    def part(self, name: Part) -> nn.Module:
        paths = self.part_paths()
        if name not in paths:
            raise ValueError(f"unknown backbone part {name!r}; expected one of {list(paths)}")
        return self.core.get_submodule(paths[name])

    def lora_target_modules(self, names: Sequence[str] | None = None) -> str:
        """A peft `target_modules` regex: the language model's linear layers (or those whose last name
        is in `names`), matched by full path so no adapter lands in the vision tower.

        Raises:
            ValueError: some of `names` match no linear layer of the language model.
        """
        prefix = self.part_paths()["language_model"]
        linears = {n.rsplit(".", 1)[-1] for n, m in self.part("language_model").named_modules()
                   if isinstance(m, nn.Linear) and n}
        wanted = set(names) if names else linears
        missing = sorted(wanted - linears)
        if missing:
            raise ValueError(f"LoRA targets {missing} match no linear layer of the language model "
                             f"({prefix}); its linear layers are {sorted(linears)}")
        return rf"{re.escape(prefix)}\..*\.({'|'.join(sorted(wanted))})"

    def add_lora(self, r: int, alpha: int, dropout: float, targets: Sequence[str] | None = None,
                 gradient_checkpointing: bool = False) -> None:
        """Wrap `model` in peft LoRA on the language model (QLoRA when its weights are 4-/8-bit)."""
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        core = self.core
        quantized = next((m for m in core.modules()
                          if getattr(m, "is_loaded_in_4bit", False) or getattr(m, "is_loaded_in_8bit", False)), None)
        if quantized is not None:  # QLoRA: the (sub)model transformers loaded with bitsandbytes weights
            prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=gradient_checkpointing)
            _keep_cpu_4bit_layout(quantized)
        elif gradient_checkpointing:
            self.enable_gradient_checkpointing()
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=self.lora_target_modules(targets))
        self.model = get_peft_model(core, config)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the language model's activations in the backward pass."""
        lm = self.part("language_model")
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def part_parameters(self, part: str) -> list[nn.Parameter]:
        """The parameters of one trainable part: "projector", "vision" or "lora" (the adapters only)."""
        if part in ("projector", "vision"):
            return list(self.part(part).parameters())  # type: ignore[arg-type]
        if part == "lora":
            return [p for n, p in self.core.named_parameters() if "lora_" in n]
        raise ValueError(f"unknown trainable part {part!r}; expected one of {TRAIN_PARTS}")

    def set_trainable(self, parts: Sequence[str]) -> list[nn.Parameter]:
        """Make exactly `parts` trainable; returns the parameters that were frozen and now train."""
        unknown = set(parts) - set(TRAIN_PARTS)
        if unknown:
            raise ValueError(f"unknown trainable parts {sorted(unknown)}; expected some of {TRAIN_PARTS}")
        wanted = {id(p) for part in parts for p in self.part_parameters(part)}
        newly = []
        for p in self.parameters():
            train = id(p) in wanted
            if train != p.requires_grad:  # quantized weights are integer tensors: leave frozen ones untouched
                if train:
                    newly.append(p)
                p.requires_grad_(train)
        return newly

    # training and generation -----------------------------------------------------------------

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Response-token cross-entropy: `loss` (mean over the batch's response tokens), and per example
        the summed token loss `sample_loss_sum` over its `sample_tokens` response tokens."""
        targets = batch["labels"][:, 1:]
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # positions where some row has a response
        logits = self.logits(batch["inputs"], keep)
        targets = targets[:, keep]
        token_loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        counts = (targets != IGNORE_INDEX).sum(1)
        return {"loss": token_loss.sum() / counts.sum().clamp(min=1),
                "sample_loss_sum": token_loss.sum(1), "sample_tokens": counts}

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], budgets: Sequence[int]) -> list[str]:
        """Answer texts, row `i` cut at `budgets[i]` new tokens, so an answer does not depend on which
        other tasks share its batch."""
        new = self.generate_ids(batch["inputs"], max(budgets))
        tok = self.processor.tokenizer
        return [tok.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(new, budgets, strict=True)]

    def cast_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Floating inputs (pixel values) in the vision encoder's dtype."""
        dtype = next(self.part("vision").parameters()).dtype
        return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in inputs.items()}


def _keep_cpu_4bit_layout(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPU, the first forward in eval mode without gradients (a validation pass) repacks each
    `Linear4bit` weight in place, and later training steps backpropagate through the repacked
    weight with wrong values: measured on the tiny LLM, the LoRA gradient norm fell from 23.7 to
    5.0 after one validation pass and the loss moved. Training needs the training layout.
    """
    from bitsandbytes.nn import Linear4bit  # a quantized model was loaded through it

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
