"""`PackingMixin`: padding-free packing of a processor's training rows, and what the processor measures to decide
whether its rows can be packed (`BackboneProcessor` inherits it)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from emoverse.backbones.media import SAMPLE_RATE, silence
from emoverse.backbones.packing import layout_bound


class PackingMixin:
    """Packing and the measurements behind it; uses the processor's `encode`, `render`, `messages` and
    `modalities`."""

    packing_blocker: str | None = None
    """Why this model cannot take packed rows (set by the backbone from its model), or None."""

    def packing_unsupported(self) -> str | None:
        """Why training rows of this backbone cannot be packed (one line), or None when they can.

        Packing concatenates a batch's rows into one and restarts `position_ids` at every example, from
        which transformers builds a block-causal mask (no attention across examples). Per-token inputs besides
        `input_ids` travel with the row when their entries for a row do not depend on the batch's other rows
        (`packable_inputs`, e.g. `mm_token_type_ids`); a model that computes its positions from the whole row
        gets them per example from its backbone (`Backbone.packed_inputs`). What remains is refused here: a
        model that cannot take packed positions (`packing_blocker`), a per-token input sized or valued by the
        other rows (Mllama's `cross_attention_mask`).
        """
        if self.packing_blocker is not None:
            return self.packing_blocker
        bound = sorted(set(per_token_inputs(self._probe(), self.media_inputs)) - self.packable_inputs)
        if bound:
            return (f"its processor returns per-token inputs {bound} whose entries for a row change with the batch's "
                    "other rows, so rows cannot be concatenated")
        return None

    def _probe(self, query: str = "q", n_images: int = 1, seconds: float = 0.5) -> dict[str, torch.Tensor]:
        """The model inputs of one prompt with `n_images` 32 px frames and `seconds` of audio, each where the backbone
        takes that medium."""
        texts, images, media = self._probe_rows([(query, n_images, seconds)])
        return self.encode(texts, images, **media)

    def _probe_rows(self, rows: Sequence[tuple[str, int, float]]
                    ) -> tuple[list[str], list[list[Image.Image]], dict[str, Any]]:
        takes = self.modalities
        texts = [self.render(self.messages(q, n * ("image" in takes), audio="audio" in takes), add_generation_prompt=True)
                 for q, n, _ in rows]
        images = [[Image.new("RGB", (32, 32))] * n if "image" in takes else [] for _, n, _ in rows]
        media = {"audios": [silence(int(SAMPLE_RATE * s)) for *_, s in rows]} if "audio" in takes else {}
        return texts, images, media

    @functools.cached_property
    def media_inputs(self) -> frozenset[str]:
        """The encoded inputs that are media, not one entry per token, whatever their shape: measured on two
        prompts of different lengths with the same media (a media tensor keeps its size; an audio model's
        `[clips, mel bins, frames]` features would otherwise pass for per-token inputs whenever the clip count
        equals the batch size and the mel bins or frames the prompt width)."""
        short, long = self._probe("q"), self._probe("q" + " q" * 7)
        width = {id(d): d["input_ids"].shape[1] for d in (short, long)}
        return frozenset(k for k in short.keys() & long.keys()
                         if not all(isinstance(d[k], torch.Tensor) and d[k].dim() >= 2 and d[k].shape[1] == width[id(d)]
                                    for d in (short, long)))

    @functools.cached_property
    def packable_inputs(self) -> frozenset[str]:
        """The per-token inputs (besides `input_ids` and `attention_mask`) that a packed row takes by concatenating
        each row's unpadded stretch: those whose entries for a row are the same batched as alone (measured on two
        prompts of different lengths with one and two frames, 0.5 s and 1 s of audio, `packing.layout_bound`)."""
        rows = [("q", 1, 0.5), ("q" + " q" * 7, 2, 1.0)]
        texts, images, media = self._probe_rows(rows)
        batch = self.encode(texts, images, **media)
        names = sorted(per_token_inputs(batch, self.media_inputs))
        if not names:
            return frozenset()
        alone = [self.encode([t], [imgs], **{k: [v[i]] for k, v in media.items()})
                 for i, (t, imgs) in enumerate(zip(texts, images))]
        return frozenset(names) - set(layout_bound(batch, alone, names))

    def pack(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A right-padded training batch (`__call__` with responses) as one padding-free row.

        Returns:
            `inputs` (`input_ids` and `position_ids` `[1, sum of lengths]`, restarting at 0 for each example; the
            other per-token inputs (`packable_inputs`) concatenated the same way; no `attention_mask`; the media
            inputs as they were, in example order), `labels` `[1, ...]` and `packed_lengths` (tokens per example,
            in order). A backbone whose model computes its own positions replaces `position_ids` before its forward
            (`Backbone.packed_inputs`).

        Raises:
            ValueError: the backbone cannot pack (`packing_unsupported`), or the batch has a per-token input that
                cannot be concatenated.
        """
        inputs, labels = batch["inputs"], batch["labels"]
        per_token = per_token_inputs(inputs, self.media_inputs)
        bound = sorted(set(per_token) - self.packable_inputs)
        reason = self.packing_blocker or (f"its processor returns per-token inputs {bound} that cannot be concatenated "
                                          "into one row" if bound else None)
        if reason:
            raise ValueError(f"{type(self).__name__} cannot pack: {reason}")
        mask = inputs["attention_mask"].bool()
        lengths = mask.sum(1)
        packed = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        packed.update({k: v[mask].unsqueeze(0) for k, v in per_token.items()})
        packed["input_ids"] = inputs["input_ids"][mask].unsqueeze(0)
        packed["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0)
        return {**batch, "inputs": packed, "labels": labels[mask].unsqueeze(0), "packed_lengths": lengths}


def per_token_inputs(inputs: Mapping[str, Any], media: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Inputs with one entry per token (batch and sequence first) other than `input_ids` and `attention_mask`,
    leaving out the `media` inputs (`BackboneProcessor.media_inputs`) whatever their shape."""
    ids = inputs["input_ids"]
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *media)
            and isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[:2] == ids.shape}
