"""`CausalLMBackbone`: any transformers causal LM (Llama, Qwen, SmolLM, Mistral, ...) as a text-only backbone.

Text-only affective LLMs (the EmoLLMs line of work) and the text arm of a modality ablation train through the same
contract as the multimodal backbones: the model's own chat template, stops from the template and the model's
`generation_config`, LoRA on the decoder blocks only, trainable-only checkpoints, `emoverse export` to a folder
`AutoModelForCausalLM.from_pretrained` loads. It takes no media (`modalities` is empty): a task whose config does not
name `media` shows none on it (`default_media`), and a task that asks for frames or audio is refused when the module
is built (`check_media_support`), before any data is read.

Weights load from a hub id, a local folder, or a `.gguf` file (`gguf_file=`), where transformers can dequantise
that architecture (Llama, Qwen2, Mistral, ...): the model is then a plain fp32 (or `dtype`) model that trains and
exports like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from emoverse.backbones.base import Backbone, BackboneProcessor, Part
from emoverse.backbones.hf_vlm import packing_blocker
from emoverse.backbones.packing import crossing_blocker
from emoverse.backbones.processor import left_padded
from emoverse.backbones.quantization import Quantization, quantization_config

GGUF_SUFFIX = ".gguf"


class TextProcessor(BackboneProcessor):
    """Prompts through the tokenizer's chat template, left-padded; no media.

    Args:
        tokenizer: a transformers tokenizer with a chat template.
        max_length: the model's context length.
        generation_eos: the ids of the model's `generation_config.eos_token_id` (stops besides the tokenizer's).
    """

    def __init__(self, tokenizer: Any, max_length: int, generation_eos: Sequence[int] = ()) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.generation_eos = tuple(generation_eos)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset()

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        # a text chat template reads a string content: the user parts are text only (no media slots on this backbone)
        flat = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                 else "".join(p.get("text") or "" for p in m["content"])} for m in messages]
        return self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, texts: list[str], images: list[list[Image.Image]], *, videos: Sequence[Any] | None = None,
               audios: Sequence[np.ndarray | None] | None = None) -> dict[str, torch.Tensor]:
        if any(images) or any(v is not None for v in videos or []) or any(a is not None for a in audios or []):
            raise ValueError("TextProcessor takes no media: a text-only backbone shows the tasks' text alone")
        rows = [self.tokenize(t) for t in texts]
        return left_padded(rows, self.pad_id)


class CausalLMBackbone(Backbone):
    """A transformers causal LM alone: the text-only backbone.

    Args:
        llm: a hub id, a local folder, a `.gguf` file (loaded dequantised through transformers' GGUF support), or a
            loaded `PreTrainedModel`.
        tokenizer: the tokenizer when `llm` is a model (loaded with the model when `llm` is a path).
        gguf_file: the GGUF file's name inside the folder or hub repo `llm` (instead of giving the file's path).
        dtype: torch dtype name for the weights, e.g. "bfloat16".
        quantization: "4bit" / "8bit" bitsandbytes weights (QLoRA).
        trust_remote_code: explicit opt-in for hub models that ship their own code.
        max_length: context length; default: the config's `max_position_embeddings`.
    """

    def __init__(self, llm: str | PreTrainedModel, tokenizer: Any = None, gguf_file: str | None = None,
                 dtype: str | None = None, quantization: Quantization | None = None, trust_remote_code: bool = False,
                 max_length: int | None = None) -> None:
        super().__init__()
        if isinstance(llm, (str, Path)):
            llm, tokenizer = load_causal_lm(str(llm), gguf_file, dtype, quantization, trust_remote_code)
        elif tokenizer is None:
            raise ValueError("CausalLMBackbone: `tokenizer` is required when `llm` is a model, not a path")
        if tokenizer.chat_template is None:
            raise ValueError(f"CausalLMBackbone: {llm.name_or_path or type(llm).__name__} has no chat template "
                             "(tokenizer_config.json / the GGUF's tokenizer.chat_template); expected an instruct or chat "
                             "model, or set tokenizer.chat_template (a Jinja string) and pass the model")
        eos = llm.generation_config.eos_token_id if llm.generation_config is not None else None
        eos_ids = eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
        self.model = llm
        self.processor = TextProcessor(tokenizer, max_length or llm.config.max_position_embeddings, eos_ids)
        self.processor.packing_blocker = packing_blocker(llm) or crossing_blocker(llm)
        self._decoder = next(n for n, m in llm.named_modules() if m is llm.get_decoder())
        self.set_trainable([])

    def part_paths(self) -> dict[Part, str | tuple[str, ...]]:
        return {"language_model": self._decoder}

    def part_parameters(self, part: str) -> list[torch.nn.Parameter]:
        """As `Backbone.part_parameters`; "projector" is empty here (nothing maps media in), so a stage training
        `[projector, lora]` (the default) trains the adapters alone."""
        if part == "projector":
            return []
        return super().part_parameters(part)

    def cast_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(inputs)  # token ids and masks only: nothing to cast

    @torch.no_grad()
    def choice_logprobs(self, inputs: Mapping[str, torch.Tensor], choices: Sequence[Sequence[int]]) -> torch.Tensor:
        """As `Backbone.choice_logprobs`, in one forward of the prompts: their KV cache is repeated once per choice
        and continued by the choices' tokens (a choice is a few tokens, a prompt a hundred or more)."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rows, n = ids.shape[0], len(choices)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: positions as generation counts them
        first = self.core(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        head = first.logits[:, -1].float().log_softmax(-1)  # predicts each choice's first token
        width = max(len(c) for c in choices)
        cont = torch.full((n, width), self.processor.pad_id, dtype=ids.dtype, device=ids.device)
        for c, tokens in enumerate(choices):
            cont[c, :len(tokens)] = torch.tensor(list(tokens), dtype=ids.dtype)
        cache = first.past_key_values
        cache.batch_repeat_interleave(n)  # row b's cache for each of the n choices: rows b * n + c
        cont_ids = cont.repeat(rows, 1)
        cont_mask = torch.cat([mask.repeat_interleave(n, 0), torch.ones_like(cont_ids)], dim=1)
        cont_pos = positions[:, -1:].repeat_interleave(n, 0) + 1 + torch.arange(width, device=ids.device)
        logits = self.core(input_ids=cont_ids, attention_mask=cont_mask, position_ids=cont_pos, cache=cache,
                           use_cache=True).logits.float().log_softmax(-1)  # [rows * n, width, vocab]
        out = torch.empty(rows, n)
        for c, tokens in enumerate(choices):
            for b in range(rows):
                total = head[b, tokens[0]]
                for k in range(1, len(tokens)):  # token k is predicted at position k - 1 of the continuation
                    total = total + logits[b * n + c, k - 1, tokens[k]]
                out[b, c] = total
        return out

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the model with LoRA merged and its tokenizer: a folder `AutoModelForCausalLM` loads.

        A GGUF-loaded model is written through a fresh model of its class built from its config (transformers
        refuses to save a model it loaded from GGUF); the weights are the same tensors."""
        model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        if getattr(model.config, "gguf_file", None) or getattr(model, "_emoverse_from_gguf", False):
            fresh = type(model)(model.config)
            fresh.load_state_dict(model.state_dict())
            fresh.generation_config = model.generation_config
            model = fresh
        model.save_pretrained(out_dir, safe_serialization=True)
        self.processor.tokenizer.save_pretrained(out_dir)


def load_causal_lm(path: str, gguf_file: str | None, dtype: str | None, quantization: Quantization | None,
                   trust_remote_code: bool) -> tuple[PreTrainedModel, Any]:
    """The model and tokenizer at `path` (a hub id, a folder, or a `.gguf` file; or a folder/repo with `gguf_file`).

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder that holds no model.
        ValueError: a GGUF file transformers cannot load (one line naming the file and what was expected).
    """
    local = Path(path)
    if path.endswith(GGUF_SUFFIX):
        if gguf_file is not None:
            raise ValueError(f"CausalLMBackbone: llm={path!r} is a GGUF file and gguf_file={gguf_file!r} names another; "
                             "give the file's path alone, or its folder with gguf_file")
        if not local.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file; expected a .gguf model file transformers can load")
        local, gguf_file, path = local.parent, local.name, str(local.parent)
    elif local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"{path}: expected a model folder (config.json and weights), a .gguf file or a hub id")
        if gguf_file is None and not (local / "config.json").is_file():
            ggufs = sorted(p.name for p in local.glob(f"*{GGUF_SUFFIX}"))
            hint = f"; it holds {ggufs}: pass gguf_file=<one of them>" if ggufs else ""
            raise FileNotFoundError(f"{path}: the folder holds no config.json; expected a transformers model folder "
                                    f"(config.json and weights) or a .gguf file{hint}")
        if gguf_file is not None and not (local / gguf_file).is_file():
            raise FileNotFoundError(f"{local / gguf_file}: no such GGUF file in {path}")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization, dtype)
    where = str(Path(path) / gguf_file) if gguf_file else path
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                  **({"gguf_file": gguf_file} if gguf_file else {}))
    except (ValueError, OSError, KeyError, RuntimeError, TypeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if gguf_file is not None:
            raise ValueError(f"{where}: transformers cannot load this GGUF file ({type(err).__name__}: {first}); "
                             "expected a GGUF of an architecture transformers dequantises (llama, qwen2, mistral, ...) "
                             "with its tokenizer") from None
        raise ValueError(f"{where}: cannot load a causal LM ({type(err).__name__}: {first}); expected a folder or hub "
                         "id that AutoModelForCausalLM and AutoTokenizer load") from None
    if gguf_file is not None:
        model._emoverse_from_gguf = True  # transformers will not save_pretrained it as it is (see save_pretrained)
    return model, tokenizer
