"""`Backbone`: the contract every multimodal LLM fulfils (its data half, `BackboneProcessor`, is in
`emoverse.backbones.processor` and re-exported here).

A backbone owns its multimodal inputs. Its processor turns examples (a task query, the frames it
shows, the response to learn) into model inputs with the model's own chat template and image
handling (image wrappers, variable visual token counts, extra tensors such as Qwen2-VL's
`image_grid_thw`); the backbone runs `forward` on them (logits at the response positions only)
and `generate`. It names its parts (vision and audio encoders, projectors, language model) by module path,
so trainability and LoRA targets are decided by path, never by a bare layer name that also
exists in the vision tower.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from emoverse.backbones.processor import IGNORE_INDEX, BackboneProcessor, PromptTooLong
from emoverse.backbones.processor_packing import per_token_inputs

if TYPE_CHECKING:
    from emoverse.data.batches import GenerationBatch, TrainBatch

__all__ = ["IGNORE_INDEX", "TRAIN_PARTS", "Backbone", "BackboneProcessor", "Part", "PartGroup", "PromptTooLong",
           "Sampling", "TrainPart", "decoder_blocks", "lora_candidates"]

Part = Literal["vision", "audio", "projector", "language_model"]
"""The modules a backbone names by path (`part_paths`)."""
TrainPart = Literal["projector", "lora", "vision", "audio"]
"""What trains, as a stage's `train` and `set_trainable` name it: a module part, or "lora" (the adapters)."""
TRAIN_PARTS: tuple[str, ...] = get_args(TrainPart)


@dataclass(frozen=True)
class Sampling:
    """How `Backbone.generate_ids` samples instead of decoding greedily.

    Attributes:
        temperature: divides the logits (> 0).
        top_p: nucleus mass kept, in (0, 1].
    """

    temperature: float = 1.0
    top_p: float = 1.0


class Backbone(nn.Module, ABC):
    """A multimodal LLM: vision and/or audio encoder → projector(s) → language model, plus its `processor`.

    Subclasses set `model` (the whole network; LoRA wraps it) and `processor` in `__init__` and
    implement `part_paths`. `model` follows the transformers calling convention (`forward(**inputs,
    logits_to_keep=...)` returning `.logits`, `generate(**inputs, ...)` returning the prompt and the
    new tokens); a model that does not overrides `logits` and `generate_ids`. The encoders (vision,
    audio) start frozen, the projectors train and the language model trains through LoRA adapters
    (`add_lora`).

    Attributes:
        model: the network, a `peft.PeftModel` after `add_lora`.
        processor: turns examples into this model's inputs (handed to data workers).
    """

    model: nn.Module
    processor: BackboneProcessor

    @abstractmethod
    def part_paths(self) -> dict[Part, str | tuple[str, ...]]:
        """Module paths, inside the unwrapped `model`, of "vision" and/or "audio" (the encoders; a model has at
        least one), "projector" (every module that maps encoder features into the language model, of each
        modality) and "language_model" (the decoder stack without the output head). A part made of several
        modules (Qwen3-VL's projector: `visual.merger` and `visual.deepstack_merger_list`; Qwen2.5-Omni's:
        `visual.merger` and `audio_tower.proj`) is a tuple of paths."""

    def logits(self, inputs: Mapping[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Logits `[B, len(keep), vocab]` at sequence positions `keep` (the positions predicting a
        response token), so the full-vocabulary projection runs only where the loss needs it.

        The default calls `core(**inputs, logits_to_keep=keep)`, the transformers convention.
        """
        return self.core(**self.cast_inputs(inputs), logits_to_keep=keep, use_cache=False).logits

    def packed_inputs(self, inputs: Mapping[str, torch.Tensor], lengths: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """The model inputs of a packed row (`BackboneProcessor.pack`; `lengths`: tokens per example) as `logits`
        takes them. The default: as they are (a model that reads `position_ids` as given); a model that computes
        positions from the whole row replaces them by those of each example (`HFVisionLanguageBackbone`)."""
        return inputs

    def generate_ids(self, inputs: Mapping[str, torch.Tensor], max_new_tokens: int,
                     sampling: Sampling | None = None) -> torch.Tensor:
        """KV-cached generation from left-padded prompts: the new token ids `[B, T]`, greedy, or sampled
        with `sampling` (temperature, top-p; from the global torch RNG, which checkpoints restore).
        A row that ended early is padded with `processor.pad_id` after its stop token.

        The default calls `core.generate(**inputs, ...)`, the transformers convention (the output
        starts with the prompt).
        """
        out = self.core.generate(**self.cast_inputs(inputs), max_new_tokens=max_new_tokens, use_cache=True,
                                 **self.sampling_kwargs(sampling))
        return out[:, inputs["input_ids"].shape[1]:]

    def group_sampling_unsupported(self) -> str | None:
        """Why `sample_groups` cannot prefill each prompt once (one line), or None; measured once per backbone.

        `sample_groups` prefills a prompt without its last token, so the prompt's cache must not depend on later
        tokens: measured on a probe prompt (the keys of every layer, prefilled with and without its last token).
        PaliGemma's prompt attends bidirectionally (its prefix-LM mask) and is refused so.
        """
        cached = getattr(self, "_group_sampling_unsupported", False)
        if cached is False:
            cached = self._measure_group_sampling()
            self._group_sampling_unsupported = cached
        return cached

    def _measure_group_sampling(self) -> str | None:
        inputs = self.cast_inputs(self.processor._probe())
        per_token = ["input_ids", "attention_mask", *per_token_inputs(inputs, self.processor.media_inputs)]
        head = {**inputs, **{k: inputs[k][:, :-1] for k in per_token}}
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                full, part = (self.core(**x, use_cache=True) for x in (inputs, head))
        finally:
            self.train(was)
        full, part = (getattr(o, "cache", None) or o.past_key_values for o in (full, part))
        end = inputs["input_ids"].shape[1] - 1  # the prompt's last token, which `part` lacks
        for layer, (a, b) in enumerate(zip(full.layers, part.layers, strict=True)):
            if a.keys is None or b.keys is None:  # a layer that reads another's cache (Gemma 3n's shared KV)
                continue
            if a.keys.shape == b.keys.shape and torch.allclose(a.keys, b.keys, rtol=1e-4, atol=1e-5):
                continue  # not per prompt token: cross-attention to the media (Mllama)
            # a sliding-window layer keeps only its last tokens: compare the positions both hold
            first_a, first_b = end + 1 - a.keys.shape[-2], end - b.keys.shape[-2]
            start = max(first_a, first_b)
            x = a.keys[..., start - first_a:end - first_a, :]
            y = b.keys[..., start - first_b:end - first_b, :]
            if not torch.allclose(x, y, rtol=1e-4, atol=1e-5):
                return (f"its prompt's cache at layer {layer} depends on later prompt tokens (a bidirectional prompt "
                        "mask), so a prompt cannot be prefilled without its last token")
        return None

    def sample_groups(self, once: Mapping[str, torch.Tensor], group: int, max_new_tokens: int,
                      sampling: Sampling) -> torch.Tensor:
        """`group` sampled answers per prompt with each prompt prefilled once: the new token ids `[prompts x group, T]`,
        the answers of one prompt consecutive, as `generate_ids` on the prompts repeated `group` times gives them.

        The prompts without their last token (the media in it) are prefilled once (a greedy one-token `generate`
        whose token is dropped and which draws no random numbers); that cache is repeated `group` times
        (`Cache.batch_repeat_interleave`) and generation continues from it on the repeated prompts (transformers'
        documented reuse of a cache: only the uncached last token is fed, no media), so every sampling step,
        the first included, draws from `[prompts x group, vocab]` probabilities with the same processors
        (temperature, top-p, suppressed tokens) and the global torch RNG as `generate_ids`.
        """
        proc = self.processor
        inputs = self.cast_inputs(once)
        ids = inputs["input_ids"]
        per_token = ["input_ids", "attention_mask", *per_token_inputs(inputs, proc.media_inputs)]
        head = {**inputs, **{k: inputs[k][:, :-1] for k in per_token}}
        first = self.core.generate(**head, max_new_tokens=1, do_sample=False, use_cache=True,
                                   return_dict_in_generate=True, eos_token_id=proc.stop_ids, pad_token_id=proc.pad_id)
        cache = first.cache
        cache.batch_repeat_interleave(group)
        tail = {k: inputs[k].repeat_interleave(group, 0) for k in per_token}
        out = self.core.generate(**tail, cache=cache, max_new_tokens=max_new_tokens, use_cache=True,
                                 **self.sampling_kwargs(sampling))
        return out[:, ids.shape[1]:]

    def sampling_kwargs(self, sampling: Sampling | None) -> dict[str, Any]:
        """`generate`'s arguments for greedy decoding (None) or sampling: stop tokens, padding, temperature, top-p,
        the suppressed tokens; top_k=0 turns off the top-k filter a generation_config may set."""
        proc = self.processor
        how: dict[str, Any] = {"do_sample": False}
        if sampling is not None:
            how = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
                   "suppress_tokens": proc.unsampled_ids}
        return {"eos_token_id": proc.stop_ids, "pad_token_id": proc.pad_id, **how}

    @torch.no_grad()
    def choice_logprobs(self, inputs: Mapping[str, torch.Tensor], choices: Sequence[Sequence[int]]) -> torch.Tensor:
        """`[B, len(choices)]`: the log-probability of each choice's tokens after each left-padded prompt of `inputs`
        (a generation batch's inputs), summed over its tokens: likelihood scoring of closed answers.

        The default appends each choice to every prompt (the media as encoded; per-token inputs extended as
        generation extends them) and reads the response-token loss, one forward per choice; a backbone whose model
        continues a KV cache does it in one prompt forward (`CausalLMBackbone`).
        """
        from emoverse.data.batches import TrainBatch  # the data package imports the backbones

        device = inputs["input_ids"].device
        prompts = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        rows = inputs["input_ids"].shape[0]
        out = torch.empty(rows, len(choices))
        for c, tokens in enumerate(choices):
            # the rows [prompt; choice], right-padded, labels on the choice's tokens only (no end-of-turn)
            full, labels = self.processor.append_responses(dict(prompts), [list(tokens)] * rows)
            moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in full.items()}
            batch = TrainBatch(moved, labels.to(device), tasks=["choice"] * rows, ids=[str(i) for i in range(rows)])
            out[:, c] = -self.loss(batch)["sample_loss_sum"].float().cpu()
        return out

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
            ValueError: some of `names` match no linear layer of the language model's decoder blocks, or its blocks
                hold no linear layer LoRA can adapt.
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
        if not chosen:
            raise ValueError(f"{type(self).__name__}: the decoder blocks of its language model ({prefix}) hold no linear "
                             "layer LoRA can adapt; expected torch Linear or transformers Conv1D layers in them")
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
        """The parameters of one trainable part: "projector", "vision", "audio" or "lora" (the adapters only).

        Raises:
            ValueError: an unknown part, or an encoder this backbone does not have (one line, naming its parts).
        """
        if part in ("vision", "audio") and part not in self.part_paths():
            raise ValueError(f"{type(self).__name__} has no {part} encoder to train; its parts are "
                             f"{sorted(self.part_paths())}")
        if part in ("projector", "vision", "audio"):
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

    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Response-token cross-entropy: `loss` (mean over the batch's response tokens), and per example
        the summed token loss `sample_loss_sum` over its `sample_tokens` response tokens.

        A packed batch (`BackboneProcessor.pack`: one row, `packed_lengths`) gives the same per example."""
        targets = batch.labels[:, 1:]
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # positions where some row has a response
        lengths = batch.packed_lengths
        inputs = batch.inputs if lengths is None else self.packed_inputs(batch.inputs, lengths)
        logits = self.logits(inputs, keep)
        targets = targets[:, keep]
        token_loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        valid = targets != IGNORE_INDEX
        if lengths is None:
            sums, counts = token_loss.sum(1), valid.sum(1)
        else:  # target p predicts token p + 1, which belongs to the example holding it (never the one before)
            owner = torch.repeat_interleave(torch.arange(len(lengths), device=keep.device), lengths.to(keep.device))
            owner = owner[1:][keep]
            sums = token_loss.new_zeros(len(lengths)).index_add_(0, owner, token_loss[0])
            counts = torch.zeros(len(lengths), dtype=torch.long, device=keep.device).index_add_(0, owner, valid[0].long())
        return {"loss": token_loss.sum() / counts.sum().clamp(min=1), "sample_loss_sum": sums, "sample_tokens": counts}

    @torch.no_grad()
    def generate(self, batch: GenerationBatch, budgets: Sequence[int]) -> list[str]:
        """Answer texts, row `i` cut at `budgets[i]` new tokens, so an answer does not depend on which
        other tasks share its batch."""
        new = self.generate_ids(batch.inputs, max(budgets))
        tok = self.processor.tokenizer
        return [tok.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(new, budgets, strict=True)]

    def cast_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Floating inputs (pixel values, audio features) in the encoders' dtype (the vision encoder's, else the
        audio encoder's)."""
        dtype = next(self.part("vision" if "vision" in self.part_paths() else "audio").parameters()).dtype
        return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "attention_mask"
                else v for k, v in inputs.items()}

    def mask_dtype(self) -> torch.dtype:
        """The dtype of an additive attention mask: the language model's compute dtype (a shared-prompt row's 4D
        mask, `objectives.shared_rows`)."""
        return next((p.dtype for p in self.part("language_model").parameters() if p.is_floating_point()
                     and p.dtype in (torch.float32, torch.float16, torch.bfloat16)), torch.float32)

    def shared_positions(self, prompts: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The rotary positions `[axes, prompts, width]` of left-padded prompts for a model that computes them
        itself (M-RoPE), or None for a model that reads plain `position_ids` (the default)."""
        return None


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
    """Whether LoRA can adapt `module` as a linear map (peft wraps it and adds its low-rank update to the output).

    torch's Linear, a quantized or adapter one (bitsandbytes, peft), transformers' `Conv1D` (GPT-2 and its
    relatives store the transposed matrix; peft adapts it), and a model's own `nn.Linear` subclass whose forward
    maps a `[1, in_features]` input to a `[1, out_features]` tensor (Falcon's `FalconLinear`). A subclass that returns
    something else merely stores a matrix (Llama 4's MoE router returns a tuple) and is left alone.
    """
    if isinstance(module, Conv1D):
        return True
    if not isinstance(module, nn.Linear):
        return False
    kind = type(module)
    if kind is nn.Linear or not kind.__module__.startswith("transformers."):
        return True
    if kind not in _MAPS_LIKE_LINEAR:
        _MAPS_LIKE_LINEAR[kind] = _maps_like_linear(module)
    return _MAPS_LIKE_LINEAR[kind]


_MAPS_LIKE_LINEAR: dict[type, bool] = {}
"""`_maps_like_linear` of each transformers `nn.Linear` subclass met (one probe per class)."""


def _maps_like_linear(module: nn.Linear) -> bool:
    """Whether `module` maps one input row to one output row (a zero row through its forward; on the meta device, where
    the weights are, this costs nothing)."""
    weight = module.weight
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, module.in_features, device=weight.device, dtype=weight.dtype))
    except Exception:  # noqa: BLE001 - a forward that cannot take a plain row is not a linear map
        return False
    return isinstance(out, torch.Tensor) and tuple(out.shape) == (1, module.out_features)


def decoder_blocks(language_model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The language model's stack of decoder blocks: of its outermost `ModuleList`s, found at any depth (a
    `*ForCausalLM` such as Llama 4's holds its blocks under `.model`), the one holding the most weights.

    Returns:
        `(path relative to language_model, the ModuleList)`, e.g. `("layers", ...)` or `("model.layers", ...)`.

    Raises:
        ValueError: the language model holds no `ModuleList`.
    """
    lists = {n: m for n, m in language_model.named_modules() if n and isinstance(m, nn.ModuleList)}
    # lists inside another list (a block's MoE experts) are part of a block, not the stack
    outermost = [(n, m) for n, m in lists.items() if not any(n.startswith(f"{other}.") for other in lists)]
    if not outermost:
        raise ValueError(f"{type(language_model).__name__} has no ModuleList of decoder blocks; pass lora_targets "
                         "(the last names of the linear layers to adapt)")
    return max(outermost, key=lambda item: sum(p.numel() for p in item[1].parameters()))


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
    # the plan's paths are relative to the base model (`layers.*.self_attn.q_proj`); a *ForCausalLM holds it
    # under a prefix (`model.`)
    declared = [p for p in every
                if any(re.fullmatch(r"(?:[\w.]+\.)?" + re.escape(k).replace(r"\*", r"\d+"), p) for k in plan)]
    return (declared or structural), every
