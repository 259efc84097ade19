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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn
from transformers import GenerationMixin

Part = Literal["vision", "projector", "language_model"]
TRAIN_PARTS: tuple[str, ...] = ("projector", "lora", "vision")
IGNORE_INDEX = -100
_SENTINEL = "\x00EMOVERSE\x00"


@dataclass(frozen=True)
class Sampling:
    """How `Backbone.generate_ids` samples instead of decoding greedily.

    Attributes:
        temperature: divides the logits (> 0).
        top_p: nucleus mass kept, in (0, 1].
    """

    temperature: float = 1.0
    top_p: float = 1.0


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

    generation_eos: tuple[int, ...] = ()
    """Token ids the model's `generation_config.eos_token_id` declares (besides the tokenizer's eos)."""

    def messages(self, query: str, n_images: int, system_prompt: str | None = None,
                 response: str | None = None) -> list[dict[str, Any]]:
        """The conversation of one example: the frames first, then the query (the paper's [T_v; T_t]).

        User content is a list of parts (it carries the image slots); system and assistant content take
        the form the chat template reads, a list of text parts or a string (`content_form`)."""
        out: list[dict[str, Any]] = []
        if system_prompt:
            out.append({"role": "system", "content": self._content("system", system_prompt)})
        out.append({"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": query}]})
        if response is not None:
            out.append({"role": "assistant", "content": self._content("assistant", response)})
        return out

    def content_form(self, role: Literal["system", "assistant"]) -> Literal["parts", "string"]:
        """How the chat template reads `role`'s content: "parts" (`[{"type": "text", "text": ...}]`) where it
        renders them, else "string" (templates that write `{{ message.content }}`, e.g. GLM-4.1V's).

        Raises:
            ValueError: the template renders the text of neither form.
        """
        forms = self.__dict__.setdefault("_content_forms", {})
        if role not in forms:
            forms[role] = self._probe_content_form(role)
        return forms[role]

    def _probe_content_form(self, role: str) -> Literal["parts", "string"]:
        errors = []
        for form in ("parts", "string"):
            content: Any = [{"type": "text", "text": _SENTINEL}] if form == "parts" else _SENTINEL
            convo = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
            convo.insert(0 if role == "system" else 1, {"role": role, "content": content})
            try:
                text = self.render(convo, add_generation_prompt=False)
            except Exception as err:  # a template that rejects the form (or the role) raises its own error
                errors.append(f"{form}: {type(err).__name__}: {err}")
                continue
            if _SENTINEL in text:  # a list rendered as its Python repr escapes the sentinel's NUL bytes
                return form  # type: ignore[return-value]
            errors.append(f"{form}: the text is not in the rendering")
        raise ValueError(f"the chat template renders the text of a {role} message neither as a list of text parts "
                         f"nor as a string ({'; '.join(errors)}); it must write the {role} content")

    def _content(self, role: Literal["system", "assistant"], text: str) -> Any:
        return [{"type": "text", "text": text}] if self.content_form(role) == "parts" else text

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @property
    def eos_ids(self) -> list[int]:
        """End-of-sequence ids: the tokenizer's and those of the model's `generation_config`."""
        return sorted({self.tokenizer.eos_token_id, *self.generation_eos} - {None})

    @functools.cached_property
    def end_ids(self) -> list[int]:
        """The tokens trained after an answer, ending in the stop token that generation ends on.

        What follows an assistant message (its end-of-turn marker, then the next turn) up to and including
        the first end-of-sequence id (`eos_ids`), or else the first special token (an end-of-turn marker such
        as GLM's `<|user|>`); where neither follows (a Vicuna-style template ends an answer with a space),
        the assistant turn's own ending plus the eos token.
        """
        convo = self.messages("q", 0, response=_SENTINEL)
        full = self.render(convo, add_generation_prompt=False)
        if _SENTINEL not in full:
            raise ValueError("the chat template must render the assistant message's content")
        turn_end = self.tokenize(full.rpartition(_SENTINEL)[2])
        follow = self.render([*convo, {"role": "user", "content": [{"type": "text", "text": "q"}]}],
                             add_generation_prompt=False)
        after = self.tokenize(follow.rpartition(_SENTINEL)[2])
        special = set(self.tokenizer.all_special_ids) | {i for i, t in self.tokenizer.added_tokens_decoder.items()
                                                         if t.special}
        for stops in (set(self.eos_ids), special):
            hit = next((i for i, t in enumerate(after) if t in stops), None)
            if hit is not None:
                return after[:hit + 1]
        if not self.eos_ids:
            raise ValueError("the chat template writes no end-of-turn token after an answer and the tokenizer has no "
                             "eos token: set tokenizer.eos_token or generation_config.eos_token_id")
        return [*turn_end, self.eos_ids[0] if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id]

    @functools.cached_property
    def unsampled_ids(self) -> list[int]:
        """Special tokens sampling never draws (all but `stop_ids`): a sampled image placeholder or chat marker
        would be read as one when the answer is fed back for training (a GRPO step)."""
        tok = self.tokenizer
        special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
        return sorted(special - set(self.stop_ids))

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a generated answer: the eos ids and the trained stop (`end_ids[-1]`)."""
        return sorted({*self.eos_ids, self.end_ids[-1]})

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

    # padding-free packing --------------------------------------------------------------------

    packing_blocker: str | None = None
    """Why this model cannot take packed rows (set by the backbone from its model), or None."""

    def packing_unsupported(self) -> str | None:
        """Why training rows of this backbone cannot be packed (one line), or None when they can.

        Packing concatenates a batch's rows into one and restarts `position_ids` at every example, from
        which transformers builds a block-causal mask (no attention across examples). It cannot serve a
        model that computes its own positions from the whole row or takes other per-token inputs (token
        type ids, cross-attention masks), which a packed row would have to rebuild per example.
        """
        if self.packing_blocker is not None:
            return self.packing_blocker
        text = self.render(self.messages("q", 1), add_generation_prompt=True)
        probe = self.encode([text], [[Image.new("RGB", (32, 32))]])
        extra = sorted(_per_token(probe))
        if extra:
            return f"its processor returns per-token inputs {extra} besides input_ids and attention_mask"
        return None

    def pack(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A right-padded training batch (`__call__` with responses) as one padding-free row.

        Returns:
            `inputs` (`input_ids` and `position_ids` `[1, sum of lengths]`, restarting at 0 for each example;
            no `attention_mask`; the vision inputs as they were, in example order), `labels` `[1, ...]` and
            `packed_lengths` (tokens per example, in order).

        Raises:
            ValueError: the backbone cannot pack (`packing_unsupported`).
        """
        inputs, labels = batch["inputs"], batch["labels"]
        extra = sorted(_per_token(inputs))
        reason = self.packing_blocker or (f"its processor returns per-token inputs {extra}" if extra else None)
        if reason:
            raise ValueError(f"{type(self).__name__} cannot pack: {reason}")
        mask = inputs["attention_mask"].bool()
        lengths = mask.sum(1)
        packed = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        packed["input_ids"] = inputs["input_ids"][mask].unsqueeze(0)
        packed["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0)
        return {**batch, "inputs": packed, "labels": labels[mask].unsqueeze(0), "packed_lengths": lengths}

    def extend_for_response(self, per_token: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        """Every per-token input of a left-padded prompt batch extended by `n` generated tokens, as generation
        extends it (`generation_rule`: the model class's own update, e.g. PaliGemma's `token_type_ids` 1 for
        generated text, Mllama's `cross_attention_mask` repeating the last prompt token's row).

        Raises:
            ValueError: a per-token input that generation does not extend.
        """
        rule = _blank(self.generation_rule)
        kwargs = dict(per_token)
        try:
            for _ in range(n):  # one token at a time, as generation does (some rules add one row per call)
                kwargs = rule._update_model_kwargs_for_generation({}, kwargs, is_encoder_decoder=False, num_new_tokens=1)
        except Exception as err:
            raise ValueError(f"{self.generation_rule.__name__}._update_model_kwargs_for_generation cannot extend "
                             f"{sorted(per_token)} without a model ({type(err).__name__}: {err}); override "
                             f"{type(self).__name__}.extend_for_response") from None
        width = next(iter(per_token.values())).shape[1] + n
        stale = sorted(k for k in per_token if kwargs[k].shape[1] != width)
        if stale:
            raise ValueError(f"processor outputs {stale} have one entry per prompt token, but "
                             f"{self.generation_rule.__name__}'s generation does not extend them to the answer; "
                             f"override {type(self).__name__}.extend_for_response to say how")
        return {k: kwargs[k] for k in per_token}

    generation_rule: type = GenerationMixin
    """The class whose `_update_model_kwargs_for_generation` says how generation extends per-token inputs."""

    def _append_responses(self, inputs: dict[str, torch.Tensor], responses: list[list[int]]
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Left-padded prompts + responses → right-padded rows `[prompt; response]` and their labels.

        Every per-token input (batch and sequence in its first two dimensions: `attention_mask`,
        `token_type_ids`, Mllama's `[B, T, frames, tiles]` `cross_attention_mask`, ...) takes on the
        response positions the values generation gives generated tokens (`extend_for_response`), so a
        training forward sees the answer as inference produces it.
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        per_token = {k: v for k, v in inputs.items() if k != "input_ids" and isinstance(v, torch.Tensor)
                     and v.dim() >= 2 and v.shape[:2] == ids.shape}
        longest = max(len(r) for r in responses)
        extended = self.extend_for_response(per_token, longest)
        lengths = [int(m.sum()) + len(r) for m, r in zip(mask, responses, strict=True)]
        width, prompt_width = max(lengths), ids.shape[1]
        out = {k: v.new_zeros((len(ids), width, *v.shape[2:])) for k, v in per_token.items()}
        out["input_ids"] = torch.full((len(ids), width), self.pad_id, dtype=ids.dtype)
        labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        for b, resp in enumerate(responses):
            n, r = int(mask[b].sum()), len(resp)
            for k, v in per_token.items():
                out[k][b, :n] = v[b][mask[b]]
                out[k][b, n:n + r] = extended[k][b, prompt_width:prompt_width + r]
            out["input_ids"][b, :n] = ids[b][mask[b]]
            out["input_ids"][b, n:n + r] = torch.tensor(resp, dtype=ids.dtype)
            labels[b, n:n + r] = torch.tensor(resp)
        return {**inputs, **out}, labels


def _per_token(inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inputs with one entry per token (batch and sequence first) other than `input_ids` and `attention_mask`."""
    ids = inputs["input_ids"]
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and isinstance(v, torch.Tensor)
            and v.dim() >= 2 and v.shape[:2] == ids.shape}


def _blank(cls: type) -> Any:
    """An instance of `cls` without `__init__` (no weights): generation's update rules read no state."""
    return object.__new__(cls)


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
    def part_paths(self) -> dict[Part, str | tuple[str, ...]]:
        """Module paths, inside the unwrapped `model`, of "vision", "projector" and "language_model"
        (the decoder stack without the output head). A part made of several modules (Qwen3-VL's projector:
        `visual.merger` and `visual.deepstack_merger_list`) is a tuple of paths."""

    def logits(self, inputs: Mapping[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Logits `[B, len(keep), vocab]` at sequence positions `keep` (the positions predicting a
        response token), so the full-vocabulary projection runs only where the loss needs it.

        The default calls `core(**inputs, logits_to_keep=keep)`, the transformers convention.
        """
        return self.core(**self.cast_inputs(inputs), logits_to_keep=keep, use_cache=False).logits

    def generate_ids(self, inputs: Mapping[str, torch.Tensor], max_new_tokens: int,
                     sampling: Sampling | None = None) -> torch.Tensor:
        """KV-cached generation from left-padded prompts: the new token ids `[B, T]`, greedy, or sampled
        with `sampling` (temperature, top-p; from the global torch RNG, which checkpoints restore).
        A row that ended early is padded with `processor.pad_id` after its stop token.

        The default calls `core.generate(**inputs, ...)`, the transformers convention (the output
        starts with the prompt).
        """
        proc = self.processor
        how: dict[str, Any] = {"do_sample": False}
        if sampling is not None:  # top_k=0 turns off the top-k filter a generation_config may set
            how = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
                   "suppress_tokens": proc.unsampled_ids}
        out = self.core.generate(**self.cast_inputs(inputs), max_new_tokens=max_new_tokens, use_cache=True,
                                 eos_token_id=proc.stop_ids, pad_token_id=proc.pad_id, **how)
        return out[:, inputs["input_ids"].shape[1]:]

    @property
    def can_sample(self) -> bool:
        """Whether `generate_ids` can sample (a reinforcement stage needs it): the model has a `generate`."""
        return callable(getattr(self.core, "generate", None))

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
        """The module at `part_paths()[name]`; a `PartGroup` of them where the part has several paths."""
        paths = self.part_paths()
        if name not in paths:
            raise ValueError(f"unknown backbone part {name!r}; expected one of {list(paths)}")
        path = paths[name]
        if isinstance(path, str):
            return self.core.get_submodule(path)
        return PartGroup([self.core.get_submodule(p) for p in path])

    def lora_target_modules(self, names: Sequence[str] | None = None) -> str:
        """A peft `target_modules` regex over full module paths: by default the plain linear layers of the
        language model's decoder blocks' attention and MLP (`lora_candidates`); with `names`, the plain linear
        layers of the decoder blocks whose last name is in `names`. Nothing outside the decoder blocks (the
        vision tower, the head, MoE routers) gets an adapter.

        Raises:
            ValueError: some of `names` match no linear layer of the language model's decoder blocks.
        """
        prefix = self.part_paths()["language_model"]
        if not isinstance(prefix, str):
            raise ValueError(f"{type(self).__name__}: the language model must be one module, not {prefix}")
        default, every = lora_candidates(self.part("language_model"))
        if names:
            last = {p.rsplit(".", 1)[-1] for p in every}
            missing = sorted(set(names) - last)
            if missing:
                raise ValueError(f"LoRA targets {missing} match no linear layer of the language model "
                                 f"({prefix}); its linear layers are {sorted(last)}")
            chosen = [p for p in every if p.rsplit(".", 1)[-1] in set(names)]
        else:
            chosen = default
        return "(?:" + "|".join(re.escape(f"{prefix}.{p}") for p in chosen) + ")"

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
        the summed token loss `sample_loss_sum` over its `sample_tokens` response tokens.

        A packed batch (`BackboneProcessor.pack`: one row, `packed_lengths`) gives the same per example."""
        targets = batch["labels"][:, 1:]
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # positions where some row has a response
        logits = self.logits(batch["inputs"], keep)
        targets = targets[:, keep]
        token_loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        valid = targets != IGNORE_INDEX
        lengths = batch.get("packed_lengths")
        if lengths is None:
            sums, counts = token_loss.sum(1), valid.sum(1)
        else:  # target p predicts token p + 1, which belongs to the example holding it (never the one before)
            owner = torch.repeat_interleave(torch.arange(len(lengths), device=keep.device), lengths.to(keep.device))
            owner = owner[1:][keep]
            sums = token_loss.new_zeros(len(lengths)).index_add_(0, owner, token_loss[0])
            counts = torch.zeros(len(lengths), dtype=torch.long, device=keep.device).index_add_(0, owner, valid[0].long())
        return {"loss": token_loss.sum() / counts.sum().clamp(min=1), "sample_loss_sum": sums, "sample_tokens": counts}

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


class PartGroup(nn.ModuleList):
    """A backbone part made of several modules (a view: the modules stay where the model holds them)."""


def _plain_linear(module: nn.Module) -> bool:
    # torch's Linear or a quantized/adapter one (bitsandbytes, peft); a model's own subclass is something
    # else that merely stores a matrix, e.g. Llama 4's MoE router, which returns a tuple
    return isinstance(module, nn.Linear) and (type(module) is nn.Linear
                                              or not type(module).__module__.startswith("transformers."))


def decoder_blocks(language_model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The language model's stack of decoder blocks: its `ModuleList` child (the one holding the most weights).

    Raises:
        ValueError: the language model has no `ModuleList` child.
    """
    lists = [(n, m) for n, m in language_model.named_children() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(language_model).__name__} has no ModuleList of decoder blocks; pass lora_targets "
                         "(the last names of the linear layers to adapt)")
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def lora_candidates(language_model: nn.Module) -> tuple[list[str], list[str]]:
    """The default LoRA targets of a decoder stack and every plain linear layer of its blocks (paths relative
    to `language_model`).

    The default: the plain linear layers of each block's attention and MLP. Where the config declares them
    (transformers' tensor-parallel plan, `base_model_tp_plan`, names a block's attention and MLP projections
    by path: `layers.*.self_attn.q_proj`, ...), those; else every plain linear layer inside a block's child
    modules that sits in no `ModuleList` (the experts of a mixture, indexed stacks) and is not a direct child
    of the block (Gemma 3n's per-layer gates).
    """
    stack, blocks = decoder_blocks(language_model)
    every, structural = [], []
    for i, block in enumerate(blocks):
        lists = {n for n, m in block.named_modules() if isinstance(m, nn.ModuleList)}
        for name, module in block.named_modules():
            if not name or not _plain_linear(module):
                continue
            every.append(f"{stack}.{i}.{name}")
            inside_list = any(name.startswith(f"{ln}.") for ln in lists)
            if "." in name and not inside_list:
                structural.append(f"{stack}.{i}.{name}")
    config = getattr(language_model, "config", None)
    plan = getattr(config, "base_model_tp_plan", None) or {}
    declared = [p for p in every if any(re.fullmatch(re.escape(k).replace(r"\*", r"\d+"), p) for k in plan)]
    return (declared or structural), every
