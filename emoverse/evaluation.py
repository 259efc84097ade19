"""Evaluation: batched greedy generation → task parsers → torchmetrics, and the test JSONL."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from emoverse.data.collator import AMTCollator, ChatSegments
from emoverse.data.dataset import select_frames
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance

if TYPE_CHECKING:
    from emoverse.module import EmoVerseModule

SPLITS = ("val", "test")


class Evaluator:
    """Generation and scoring for an `EmoVerseModule` (its metrics live in `module.metrics`)."""

    def __init__(self, module: EmoVerseModule) -> None:
        self.module = module
        self._file: IO[str] | None = None
        tok = module.backbone.processor.tokenizer
        end = ChatSegments.from_tokenizer(tok).end[:1]
        self.stop_ids = sorted({tok.eos_token_id, *end} - {None})

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int | None = None) -> list[str]:
        """Greedy, KV-cached, batched generation; `max_new_tokens` defaults to the largest task budget."""
        m = self.module
        budget = max_new_tokens or max(m.tasks[t].max_new_tokens for t in batch["tasks"])
        embeds = m.embed(batch["input_ids"], batch["pixel_values"])
        tok = m.backbone.processor.tokenizer
        out = m.backbone.llm.generate(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=budget,
            do_sample=False, use_cache=True, eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id,
        )
        # A row stops at its own task's budget, so its answer does not depend on which tasks share its batch.
        limits = [max_new_tokens or m.tasks[t].max_new_tokens for t in batch["tasks"]]
        return [tok.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(out, limits, strict=True)]

    def _rows(self, batch: dict[str, Any], texts: list[str]) -> list[dict[str, Any]]:
        rows = []
        for i, (task_name, text) in enumerate(zip(batch["tasks"], texts, strict=True)):
            task, record = self.module.tasks[task_name], batch["records"][i]
            rows.append({"id": batch["ids"][i], "task": task_name, "prompt": batch["queries"][i],
                         "generation": text, "prediction": task.parse(text, record), "record": record})
        return rows

    def step(self, batch: dict[str, Any], split: str) -> list[dict[str, Any]]:
        """Generate, parse and update `split`'s per-task metrics; test rows also go to the JSONL."""
        rows = self._rows(batch, self.generate(batch))
        for name in dict.fromkeys(r["task"] for r in rows):
            task, mine = self.module.tasks[name], [r for r in rows if r["task"] == name]
            for r in mine:
                r["target"] = task.target(r["record"])
            task.update_metric(self.module.metrics[f"{split}_{name}"], [r["prediction"] for r in mine],
                               [r["target"] for r in mine])
        if self._file is not None:
            for r in rows:
                row = {k: jsonable(v) for k, v in r.items() if k != "record"}
                self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        return rows

    def log_epoch(self, split: str) -> None:
        """Log `{split}/{task}/{metric}` for every task that was evaluated, then reset the metrics."""
        m = self.module
        for name in m.tasks:
            metric = m.metrics[f"{split}_{name}"]
            # compute() syncs across ranks, so every rank must call it when any rank saw the task
            seen = m.trainer.strategy.reduce(torch.tensor(float(metric.update_called), device=m.device), reduce_op="sum")
            if not seen:
                continue
            for key, value in metric.compute().items():
                m.log(f"{split}/{name}/{key}", value.float())
            metric.reset()

    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows `{id, task, prompt, generation, prediction}` (no labels needed, no metrics)."""
        return [{k: r[k] for k in ("id", "task", "prompt", "generation", "prediction")}
                for r in self._rows(batch, self.generate(batch))]

    def open_predictions(self, path: str | None) -> None:
        """Start the test JSONL (default `{log_dir}/test_predictions.jsonl`; one file per rank under DDP)."""
        trainer = self.module.trainer
        out = rank_path(Path(path) if path is not None else Path(trainer.log_dir or ".") / "test_predictions.jsonl",
                        trainer)
        path = str(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed in close_predictions)
        self.predictions_path = path

    def close_predictions(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def analyze(self, frames: Sequence[Any], text: str, tasks: Sequence[str], *, speaker: str | None = None,
                context: Sequence[Utterance | Mapping[str, Any]] = (), turn: int | None = None,
                emotion: str | None = None, num_frames: int = 4, peak_frame: int | None = None) -> dict[str, Any]:
        """`{task: parsed answer}` for one clip; see `EmoVerseModule.analyze` for the arguments."""
        m = self.module
        unknown = [t for t in tasks if t not in m.tasks]
        if unknown or not tasks:
            raise ValueError(f"analyze: tasks={list(tasks)}; expected a non-empty list from this module's {list(m.tasks)}")
        utterances = [_utterance(u, k) for k, u in enumerate(context)]
        fields = {"speaker": speaker, "context": utterances, "turn": turn or len(utterances) + 1,
                  "peak_frame": peak_frame, "frames": list(frames)}
        first = [t for t in tasks if t != "ecpe"]
        if "ecpe" in tasks:
            missing = [u.turn for u in utterances if u.emotion is None]
            if missing:
                raise ValueError(f"analyze: ecpe needs the emotion of every context utterance; turns {missing} have none")
            if emotion is None and "mer" not in first:
                if "mer" not in m.tasks:
                    raise ValueError("analyze: ecpe needs the target utterance's emotion: pass emotion=... "
                                     "(or give the module the 'mer' task to predict it)")
                first.append("mer")
        answers = self._answer(_analyze_record(text, emotion, fields), first, num_frames) if first else {}
        if "ecpe" in tasks:
            emotion = emotion or answers.get("mer")
            answers["ecpe"] = (None if emotion is None else  # MER answer unreadable: no target emotion to ask about
                               self._answer(_analyze_record(text, emotion, fields), ["ecpe"], num_frames)["ecpe"])
        return {t: answers[t] for t in tasks}

    def _answer(self, record: AMTRecord, tasks: list[str], num_frames: int) -> dict[str, Any]:
        """Ask every task in one batch about `record` (eval mode, restored afterwards)."""
        m = self.module
        processor = m.backbone.processor
        examples = []
        for name in tasks:
            task = m.tasks[name]
            pixels = processor.pixel_values(select_frames(record, task.media, num_frames), where="analyze")
            examples.append({"id": record.id, "task": name, "query": task.query(record, random.Random(0)),
                             "response": "", "pixel_values": pixels, "record": record})
        batch = AMTCollator(processor, "generate")(examples)
        batch = {k: v.to(m.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        was_training = m.training
        m.eval()
        try:
            texts = self.generate(batch)
        finally:
            m.train(was_training)
        return {name: m.tasks[name].parse(t, record) for name, t in zip(tasks, texts, strict=True)}


def _analyze_record(text: str, emotion: str | None, fields: dict[str, Any]) -> AMTRecord:
    if emotion is not None and emotion not in EMOTIONS:
        raise ValueError(f"analyze: emotion={emotion!r}; expected one of {EMOTIONS}")
    return AMTRecord(id="analyze", source="demo", split="predict", text=text, labels=AMTLabels(emotion=emotion),
                     **fields)


def _utterance(u: Utterance | Mapping[str, Any], k: int) -> Utterance:
    """A context turn from an `Utterance` or a dict `{speaker, text, emotion, turn (default k + 1)}`."""
    if isinstance(u, Utterance):
        return u
    try:
        return Utterance(**{"turn": k + 1, **u})
    except TypeError as err:
        raise ValueError(f"analyze: context[{k}]={dict(u)!r}: {err}; expected keys speaker, text, emotion "
                         "and optionally turn") from None


def jsonable(value: Any) -> Any:
    """Parsed answers as JSON data: dataclasses (e.g. `ECPEAnswer`) become dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def rank_path(path: Path, trainer: Any) -> Path:
    """`preds.jsonl` → `preds.rank1.jsonl` under DDP (whatever the suffix), else `path`."""
    return path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}") if trainer.world_size > 1 else path
