"""`BackboneProcessor`: the data half of a backbone (examples → model inputs), picklable for data workers.

Its subclasses implement two hooks, `render` (messages → prompt text through the model's chat template) and
`encode` (prompt texts + frames, videos and audio clips → left-padded model inputs); this base adds the response
and its labels, the stop tokens, exact prompt lengths and padding-free packing, and refuses media the backbone
does not take (`modalities`) in one line.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from emoverse.backbones.media import check_audio, silence
from emoverse.backbones.processor_packing import PackingMixin
from emoverse.backbones.processor_responses import IGNORE_INDEX, ResponsesMixin

__all__ = ["IGNORE_INDEX", "BackboneProcessor", "PromptTooLong", "media_part"]

_SENTINEL = "\x00EMOVERSE\x00"


class PromptTooLong(ValueError):
    """Row `row` of a batch has `tokens` tokens, more than the context of `max_length`."""

    def __init__(self, row: int, tokens: int, max_length: int) -> None:
        self.row, self.tokens, self.max_length = row, tokens, max_length
        super().__init__(f"row {row}: {tokens} tokens exceed the context of {max_length}")


class BackboneProcessor(ResponsesMixin, PackingMixin, ABC):
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
        folded: list[dict[str, Any]] = []
        if system_prompt and self.takes_system:
            out.append({"role": "system", "content": self._content("system", system_prompt)})
        elif system_prompt:  # the template has no system turn: the instruction opens the user turn (as Gemma 3's does)
            folded = [{"type": "text", "text": f"{system_prompt}\n\n"}]
        visual = [media_part("video")] if video else [media_part("image")] * n_images
        sound = [media_part("audio")] if audio else []
        out.append({"role": "user", "content": [*folded, *visual, *sound, {"type": "text", "text": query}]})
        if response is not None:
            out.append({"role": "assistant", "content": self._content("assistant", response)})
        return out

    @functools.cached_property
    def takes_system(self) -> bool:
        """Whether the chat template renders a system turn. One that rejects it (Gemma 2's raises "System role not
        supported") or leaves its text out gets the system prompt at the start of the user turn instead."""
        try:
            self.content_form("system")
        except ValueError:
            return False
        return True

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


def media_part(kind: str) -> dict[str, Any]:
    """The user content part of one medium: `{"type": kind}`; an audio part also has an `audio` key (None: the clip
    goes to the processor apart), since the released Qwen2-Audio templates test `'audio' in content`, not the type."""
    return {"type": kind, "audio": None} if kind == "audio" else {"type": kind}


def left_padded(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token id rows as a left-padded `input_ids` / `attention_mask` batch (generation continues at the right)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(rows):
        input_ids[b, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[b, width - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
