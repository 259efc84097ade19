"""`ResponsesMixin`: answers appended to left-padded prompts as training rows, with their labels, every per-token
input extended as generation extends it (`BackboneProcessor` inherits it; GRPO and preference objectives use
`append_responses` on sampled answers)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationMixin

from emoverse.backbones.processor_packing import per_token_inputs

IGNORE_INDEX = -100
"""The label of a position that is not scored (torch's cross-entropy default)."""


class ResponsesMixin:
    """`append_responses` and `extend_for_response`; uses the processor's `pad_id` and `media_inputs`."""

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

    def append_responses(self, inputs: dict[str, torch.Tensor], responses: list[list[int]]
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Left-padded prompts + responses → right-padded rows `[prompt; response]` and their labels.

        Every per-token input (batch and sequence in its first two dimensions: `attention_mask`,
        `token_type_ids`, Mllama's `[B, T, frames, tiles]` `cross_attention_mask`, ...) takes on the
        response positions the values generation gives generated tokens (`extend_for_response`), so a
        training forward sees the answer as inference produces it.
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        per_token = {"attention_mask": inputs["attention_mask"], **per_token_inputs(inputs, self.media_inputs)}
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


def _blank(cls: type) -> Any:
    """An instance of `cls` without `__init__` (no weights): generation's update rules read no state."""
    return object.__new__(cls)
