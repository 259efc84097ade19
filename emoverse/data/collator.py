"""Batching: the tokenizer's chat template, visual placeholder ids, response-only labels, padding.

The LLM input is [T'_v; T_t] as in the paper: the user turn starts with `tokens_per_image`
placeholder ids per frame (EmoVerseModule scatters the projected visual tokens into them),
followed by the task query; the loss covers the response tokens (and the end-of-turn marker) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from emoverse.backbones.base import Processor

IGNORE_INDEX = -100
_SENTINEL = "\x00EMOVERSE\x00"


@dataclass
class ChatSegments:
    """Token ids around the user content and after the response, rendered once from the chat template."""

    prefix: list[int]
    suffix: list[int]
    end: list[int]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, system_prompt: str | None = None) -> ChatSegments:
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        user = head + [{"role": "user", "content": _SENTINEL}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _SENTINEL}], tokenize=False)
        pre, _, post = prompt.partition(_SENTINEL)
        end = full.rpartition(_SENTINEL)[2]
        if not post or _SENTINEL in post:
            raise ValueError("the tokenizer's chat template must render each message's content exactly once")

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

        return cls(ids(pre), ids(post), ids(end))


class AMTCollator:
    """Turn examples `{id, task, query, response, pixel_values, record}` into a model batch.

    Args:
        processor: the backbone's processor (tokenizer, image token, tokens per frame, context length).
        mode: "train" appends the response and masks everything else in `labels` (right padding);
            "generate" stops after the assistant header (left padding, for batched generation).
        system_prompt: optional system message.

    Prompts longer than the context are truncated from the left of the query (the oldest dialogue
    turns go first); the batch reports how many examples were truncated in `num_truncated`.
    """

    def __init__(self, processor: Processor, mode: Literal["train", "generate"] = "train",
                 system_prompt: str | None = None) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"AMTCollator: mode={mode!r}; expected 'train' or 'generate'")
        self.processor, self.mode = processor, mode
        tok = processor.tokenizer
        self.segments = ChatSegments.from_tokenizer(tok, system_prompt)
        self.pad_id = tok.pad_token_id
        self.image_id = processor.image_token_id

    def _encode(self, ex: dict[str, Any]) -> tuple[list[int], list[int], bool]:
        tok, seg = self.processor.tokenizer, self.segments
        n_frames = 0 if ex.get("pixel_values") is None else len(ex["pixel_values"])
        image = [self.image_id] * (n_frames * self.processor.tokens_per_image)
        query = tok("\n" + ex["query"] if image else ex["query"], add_special_tokens=False)["input_ids"]
        answer = tok(ex["response"], add_special_tokens=False)["input_ids"] + seg.end if self.mode == "train" else []
        fixed = len(seg.prefix) + len(image) + len(seg.suffix) + len(answer)
        room = self.processor.max_length - fixed
        if room < 1:
            raise ValueError(f"record {ex['id']} ({ex['task']}): {fixed} tokens of template, {n_frames} frames "
                             f"and response exceed the context of {self.processor.max_length} tokens")
        truncated = len(query) > room
        if truncated:
            query = query[-room:]
        prompt = seg.prefix + image + query + seg.suffix
        labels = [IGNORE_INDEX] * len(prompt) + answer
        return prompt + answer, labels, truncated

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        encoded = [self._encode(ex) for ex in examples]
        width = max(len(ids) for ids, _, _ in encoded)
        left = self.mode == "generate"
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        attention = torch.zeros_like(input_ids)
        for b, (ids, lab, _) in enumerate(encoded):
            sl = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[b, sl] = torch.tensor(ids)
            labels[b, sl] = torch.tensor(lab)
            attention[b, sl] = 1
        frames = [ex["pixel_values"] for ex in examples if ex.get("pixel_values") is not None]
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "pixel_values": torch.cat(frames) if frames else None,
            "tasks": [ex["task"] for ex in examples],
            "ids": [ex["id"] for ex in examples],
            "queries": [ex["query"] for ex in examples],
            "responses": [ex["response"] for ex in examples],
            "records": [ex.get("record") for ex in examples],
            "num_truncated": sum(t for _, _, t in encoded),
        }
