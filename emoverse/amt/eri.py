"""ERI reasons: the paper's two-model pipeline, a describer and a reasoner, with an on-disk cache.

1. The describer (a video/image MLLM; InternVL2-8B in the paper) writes a description of the
   character and the scene. `describer_kind: vlm` gives it the clip's frames as images
   (`AutoModelForImageTextToText` + `AutoProcessor`); `describer_kind: text` gives a text LLM what is
   known of the frames in words (the FER caption of the peak frame) instead.
2. The reasoner (an LLM; Llama-3.1-8B in the paper) writes the reason from the description, the
   utterance and the emotion.

Both are transformers models given by hub id or local path, prompted through their chat templates,
generated greedily in batches. Every reason is cached as `{cache}/{record_id}.json` as soon as its
batch is done, so an interrupted build resumes where it stopped and a rerun gives the same text.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from emoverse.data.record import AMTRecord

DESCRIBER_PROMPT = (
    "These are frames of a video clip in which {speaker} says: \"{text}\"\n"
    "Describe {speaker}'s facial expression, gaze, posture and gestures, the other people present and the scene."
)
TEXT_DESCRIBER_PROMPT = (
    "A video clip shows {speaker} saying: \"{text}\"\n"
    "At the most expressive frame, the face shows: {au_caption}\n"
    "Describe {speaker}'s likely facial expression, posture and the scene."
)
REASONER_PROMPT = (
    "Description of the character and the scene: {description}\n"
    "{speaker} says: \"{text}\"\n"
    "{speaker} feels {emotion}. In one or two sentences, infer why {speaker} feels {emotion}."
)
PROMPT_FIELDS = frozenset({"speaker", "text", "emotion", "au_caption", "description"})


@dataclass
class ERIConfig:
    """The ERI pipeline: which models, which prompts, which records.

    Attributes:
        describer: hub id or local path of the describer.
        reasoner: hub id or local path of the reasoner LLM.
        describer_kind: "vlm" (frames as images) or "text" (a text LLM given the FER caption).
        describer_prompt: fields {speaker}, {text}, {emotion}, {au_caption}; None: the default for the kind.
        reasoner_prompt: fields {speaker}, {text}, {emotion}, {au_caption}, {description}.
        sources: sources whose records get a reason.
        emotions: emotions that get a reason (the paper's ERI explains emotions, not neutrality).
        num_frames: frames shown to a VLM describer (uniform over the clip's stored frames).
        batch_size: records per generate call.
        max_new_tokens: generation length of each model.
        device: torch device of both models.
        dtype: weight dtype.
        trust_remote_code: allow repository code (needed by some MLLMs); an explicit opt-in.
    """

    describer: str
    reasoner: str
    describer_kind: Literal["vlm", "text"] = "vlm"
    describer_prompt: str | None = None
    reasoner_prompt: str = REASONER_PROMPT
    sources: list[str] = field(default_factory=lambda: ["meld"])
    emotions: list[str] = field(default_factory=lambda: ["anger", "disgust", "fear", "joy", "sadness", "surprise"])
    num_frames: int = 4
    batch_size: int = 8
    max_new_tokens: int = 96
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.describer_kind not in ("vlm", "text"):
            raise ValueError(f"ERIConfig.describer_kind={self.describer_kind!r}: expected 'vlm' or 'text'")
        if self.describer_prompt is None:
            self.describer_prompt = DESCRIBER_PROMPT if self.describer_kind == "vlm" else TEXT_DESCRIBER_PROMPT
        for name in ("describer_prompt", "reasoner_prompt"):
            try:
                getattr(self, name).format(**{f: "" for f in PROMPT_FIELDS})
            except (KeyError, IndexError) as err:
                raise ValueError(f"ERIConfig.{name}: unknown field {err}; allowed fields {sorted(PROMPT_FIELDS)}") from err
        for name in ("num_frames", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"ERIConfig.{name}={getattr(self, name)}: expected an int >= 1")

    def wants(self, record: AMTRecord) -> bool:
        """Whether the record gets a reason."""
        return record.source in self.sources and record.labels.emotion in self.emotions


class ERIPipeline:
    """Describer → reasoner over batches of records, cached per record under `cache_dir`."""

    def __init__(self, config: ERIConfig, cache_dir: str | Path) -> None:
        self.config, self.cache_dir = config, Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._models: dict[str, tuple[Any, Any]] = {}

    def cached(self, record_id: str) -> str | None:
        path = self.cache_dir / f"{record_id}.json"
        return json.loads(path.read_text())["reason"] if path.is_file() else None

    def reasons(self, records: Sequence[AMTRecord]) -> dict[str, str]:
        """record id -> reason for the records `config.wants`; frames are the records' JPEG bytes or images."""
        out: dict[str, str] = {}
        todo = []
        for r in records:
            if not self.config.wants(r):
                continue
            hit = self.cached(r.id)
            if hit is None:
                todo.append(r)
            else:
                out[r.id] = hit
        for i in range(0, len(todo), self.config.batch_size):
            batch = todo[i:i + self.config.batch_size]
            descriptions = self._describe(batch)
            prompts = [self.config.reasoner_prompt.format(**_fields(r), description=d) for r, d in zip(batch, descriptions)]
            reasons = self._generate_text(self.config.reasoner, prompts)
            for r, d, reason in zip(batch, descriptions, reasons):
                self._store(r.id, {"description": d, "reason": reason, "describer": self.config.describer,
                                   "reasoner": self.config.reasoner})
                out[r.id] = reason
        return out

    def _store(self, record_id: str, entry: dict[str, str]) -> None:
        path = self.cache_dir / f"{record_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(entry, ensure_ascii=False))
        os.replace(tmp, path)  # a reason is either cached whole or not at all

    def _describe(self, batch: list[AMTRecord]) -> list[str]:
        prompts = [self.config.describer_prompt.format(**_fields(r), description="") for r in batch]
        if self.config.describer_kind == "text":
            return self._generate_text(self.config.describer, prompts)
        return self._generate_vlm(prompts, [_pick_frames(r, self.config.num_frames) for r in batch])

    def _load(self, name: str, vlm: bool) -> tuple[Any, Any]:
        if name not in self._models:
            import torch
            from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

            dtype = getattr(torch, self.config.dtype)
            kwargs = {"dtype": dtype, "trust_remote_code": self.config.trust_remote_code}
            if vlm:
                processor = AutoProcessor.from_pretrained(name, trust_remote_code=self.config.trust_remote_code)
                model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
                tokenizer = processor.tokenizer
            else:
                processor = tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=self.config.trust_remote_code)
                model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
            tokenizer.padding_side = "left"  # batched generation continues every row at the same position
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._models[name] = (model.to(self.config.device).eval(), processor)
        return self._models[name]

    def _generate_text(self, name: str, prompts: list[str]) -> list[str]:
        model, tokenizer = self._load(name, vlm=False)
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.config.device)
        return self._run(model, tokenizer, enc)

    def _generate_vlm(self, prompts: list[str], frames: list[list[Image.Image]]) -> list[str]:
        model, processor = self._load(self.config.describer, vlm=True)
        texts = []
        for prompt, images in zip(prompts, frames):
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
            texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                       add_generation_prompt=True, tokenize=False))
        enc = processor(text=texts, images=frames, return_tensors="pt", padding=True).to(self.config.device)
        return self._run(model, processor.tokenizer, enc)

    def _run(self, model: Any, tokenizer: Any, enc: Any) -> list[str]:
        import torch

        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def _fields(record: AMTRecord) -> dict[str, str]:
    return {"speaker": record.speaker or "The speaker", "text": record.text, "emotion": record.labels.emotion or "",
            "au_caption": record.labels.au_caption or "no facial action unit was measured"}


def _pick_frames(record: AMTRecord, num_frames: int) -> list[Image.Image]:
    if not record.frames:
        raise ValueError(f"record {record.id}: the VLM describer needs frames; the record has none")
    step = len(record.frames) / min(num_frames, len(record.frames))
    chosen = [record.frames[int(step * k)] for k in range(min(num_frames, len(record.frames)))]
    return [Image.open(io.BytesIO(f)).convert("RGB") if isinstance(f, bytes) else f for f in chosen]

