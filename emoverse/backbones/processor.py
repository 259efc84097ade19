"""`BackboneProcessor`: the data half of a backbone (examples → model inputs), picklable for data workers.

Its subclasses implement two hooks, `render` (messages → prompt text through the model's chat template) and
`encode` (prompt texts + frames, videos and audio clips → left-padded model inputs); this base adds the response
and its labels, the stop tokens, exact prompt lengths and padding-free packing, and refuses media the backbone
does not take (`modalities`) in one line.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers import GenerationMixin

from emoverse.backbones.media import SAMPLE_RATE, check_audio, silence
from emoverse.backbones.packing import layout_bound

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
        """Chat-template `messages` (user content: a list of `{"type": "image"}` / `{"type": "video"}` /
        `{"type": "audio"}` / `{"type": "text", ...}` parts)."""

    @abstractmethod
    def encode(self, texts: list[str], images: list[list[Image.Image]], *,
               videos: list[list[Image.Image] | None] | None = None,
               audios: list[np.ndarray | None] | None = None) -> dict[str, torch.Tensor]:
        """Tokenise rendered prompts and preprocess their media, left-padded: `input_ids`, `attention_mask` and
        whatever vision and audio tensors the model takes. Per row: `images[i]` its frames as images,
        `videos[i]` its frames as one video (or None), `audios[i]` its waveform (`SAMPLE_RATE` Hz mono, or
        None); `videos`/`audios` are passed only when some row has one (a processor for frames alone may
        leave them out of its signature)."""

    @property
    def modalities(self) -> frozenset[str]:
        """The media this backbone takes: a subset of {"image", "video", "audio"} ("video": a clip's frames as
        one video, where the processor has a video processor and the template a video placeholder)."""
        return frozenset({"image"})

    # shared ----------------------------------------------------------------------------------

    generation_eos: tuple[int, ...] = ()
    """Token ids the model's `generation_config.eos_token_id` declares (besides the tokenizer's eos)."""

    def messages(self, query: str, n_images: int, system_prompt: str | None = None,
                 response: str | None = None, *, audio: bool = False, video: bool = False) -> list[dict[str, Any]]:
        """The conversation of one example: the frames first (`n_images` image parts, or with `video` one video
        part), then the audio clip (with `audio`), then the query (the paper's [T_v; T_t], with the sound
        between).

        User content is a list of parts (it carries the media slots, rendered by the template as the model's
        own placeholders); system and assistant content take the form the chat template reads, a list of text
        parts or a string (`content_form`)."""
        out: list[dict[str, Any]] = []
        if system_prompt:
            out.append({"role": "system", "content": self._content("system", system_prompt)})
        visual = [media_part("video")] if video else [media_part("image")] * n_images
        sound = [media_part("audio")] if audio else []
        out.append({"role": "user", "content": [*visual, *sound, {"type": "text", "text": query}]})
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

    def prompt_length(self, query: str, images: Sequence[Image.Image], system_prompt: str | None = None, *,
                      audio: np.ndarray | None = None, as_video: bool = False) -> int:
        """Tokens of the prompt with its media expanded to their tokens (without the response): `images` (as one
        video with `as_video`) and `audio`, whose token count follows its duration.

        Raises:
            ValueError: media the backbone does not take, or a malformed clip (`check_audio`).
        """
        video = self._check_media("the example", images, audio, as_video)
        n_audio = None if audio is None else len(check_audio(audio, "the example"))
        text = self.render(self.messages(query, len(images), system_prompt, audio=audio is not None, video=video),
                           add_generation_prompt=True)
        return len(self.tokenize(text)) + self._media_extra(tuple(img.size for img in images), n_audio, video)

    @functools.lru_cache(maxsize=4096)  # noqa: B019  (processors live as long as their backbone)
    def _media_extra(self, sizes: tuple[tuple[int, int], ...], audio_samples: int | None = None,
                     video: bool = False) -> int:
        """How many tokens media of these frame `sizes` (one video with `video`) and an audio clip of
        `audio_samples` samples add to a prompt beyond their placeholder text (measured once per combination:
        some families treat several images differently from one, e.g. LLaVA-OneVision; audio tokens follow the
        clip's duration)."""
        text = self.render(self.messages("", len(sizes), audio=audio_samples is not None, video=video),
                           add_generation_prompt=True)
        frames = [Image.new("RGB", size) for size in sizes]
        media: dict[str, Any] = {}
        if video:
            media["videos"] = [frames]
        if audio_samples is not None:
            media["audios"] = [silence(audio_samples)]
        expanded = self.encode([text], [[] if video else frames], **media)["attention_mask"].sum()
        return int(expanded) - len(self.tokenize(text))

    def _check_media(self, where: str, images: Sequence[Image.Image], audio: Any, as_video: bool) -> bool:
        """Whether the example gives its frames as one video; one line (starting with `where`: "row 2") for media
        this backbone does not take."""
        takes = self.modalities
        video = bool(as_video) and len(images) > 0
        kind = next((k for k, given in (("image", len(images) > 0 and not video), ("video", video),
                                        ("audio", audio is not None)) if given and k not in takes), None)
        if kind is not None:
            raise ValueError(f"{where}: this backbone takes no {kind} (it takes {sorted(takes)}); drop {kind} from "
                             "the task's media or choose a backbone that takes it (docs/backbones.md)")
        return video

    def __call__(self, queries: Sequence[str], images: Sequence[Sequence[Image.Image]],
                 responses: Sequence[str] | None = None, system_prompt: str | None = None, *,
                 audios: Sequence[np.ndarray | None] | None = None,
                 as_video: Sequence[bool] | None = None) -> dict[str, Any]:
        """Encode a batch: `inputs` (the model inputs of each query with its media; with `responses`, the
        response and the end-of-turn marker appended, right-padded) and `labels` (the response tokens,
        -100 elsewhere; None without responses: left-padded prompts for generation).

        Args:
            audios: per row a waveform (`SAMPLE_RATE` Hz mono, 1-D float) or None; None: no row has audio.
            as_video: per row whether its frames go in as one video; None: none does. Rows may differ.

        Raises:
            PromptTooLong: a row exceeds `max_length` (its index is `row`).
            ValueError: a row gives media the backbone does not take, or a malformed clip (one line, naming the row).
        """
        n = len(queries)
        audios = [None] * n if audios is None else [None if a is None else check_audio(a, f"row {i}")
                                                    for i, a in enumerate(audios)]
        flags = [False] * n if as_video is None else list(as_video)
        if not len(images) == len(audios) == len(flags) == n:
            raise ValueError(f"{n} queries but {len(images)} image lists, {len(audios)} audios, {len(flags)} as_video "
                             "flags; give one per row")
        videos = [self._check_media(f"row {i}", imgs, a, v) for i, (imgs, a, v) in enumerate(zip(images, audios, flags))]
        texts = [self.render(self.messages(q, len(imgs), system_prompt, audio=a is not None, video=v),
                             add_generation_prompt=True) for q, imgs, a, v in zip(queries, images, audios, videos)]
        media: dict[str, Any] = {}
        if any(videos):
            media["videos"] = [list(imgs) if v else None for imgs, v in zip(images, videos)]
        if any(a is not None for a in audios):
            media["audios"] = audios
        inputs = self.encode(texts, [[] if v else list(imgs) for imgs, v in zip(images, videos)], **media)
        labels = None
        if responses is not None:
            inputs, labels = self.append_responses(inputs, [self.tokenize(r) + self.end_ids for r in responses])
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
        which transformers builds a block-causal mask (no attention across examples). Per-token inputs besides
        `input_ids` travel with the row when their entries for a row do not depend on the batch's other rows
        (`packable_inputs`, e.g. `mm_token_type_ids`); a model that computes its positions from the whole row
        gets them per example from its backbone (`Backbone.packed_inputs`). What remains is refused here: a
        model that cannot take packed positions (`packing_blocker`), a per-token input sized or valued by the
        other rows (Mllama's `cross_attention_mask`).
        """
        if self.packing_blocker is not None:
            return self.packing_blocker
        bound = sorted(set(_per_token(self._probe(), self.media_inputs)) - self.packable_inputs)
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
        names = sorted(_per_token(batch, self.media_inputs))
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
        per_token = _per_token(inputs, self.media_inputs)
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
        per_token = {"attention_mask": inputs["attention_mask"], **_per_token(inputs, self.media_inputs)}
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


def media_part(kind: str) -> dict[str, Any]:
    """The user content part of one medium: `{"type": kind}`; an audio part also has an `audio` key (None: the clip
    goes to the processor apart), since the released Qwen2-Audio templates test `'audio' in content`, not the type."""
    return {"type": kind, "audio": None} if kind == "audio" else {"type": kind}


def _per_token(inputs: Mapping[str, Any], media: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Inputs with one entry per token (batch and sequence first) other than `input_ids` and `attention_mask`,
    leaving out the `media` inputs (`BackboneProcessor.media_inputs`) whatever their shape."""
    ids = inputs["input_ids"]
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *media)
            and isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[:2] == ids.shape}


def _blank(cls: type) -> Any:
    """An instance of `cls` without `__init__` (no weights): generation's update rules read no state."""
    return object.__new__(cls)
