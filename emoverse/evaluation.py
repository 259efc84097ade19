"""Evaluation: batched greedy generation → task parsers → torchmetrics, and the test JSONL."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from emoverse.data.collator import AMTCollator, ChatSegments
from emoverse.data.dataset import select_frames
from emoverse.data.record import AMTRecord

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
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

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
                self._file.write(json.dumps({k: v for k, v in r.items() if k != "record"}, ensure_ascii=False) + "\n")
        return rows

    def log_epoch(self, split: str) -> None:
        """Log `{split}/{task}/{metric}` for every task that was evaluated, then reset the metrics."""
        for name in self.module.tasks:
            metric = self.module.metrics[f"{split}_{name}"]
            if not metric.update_called:
                continue
            for key, value in metric.compute().items():
                self.module.log(f"{split}/{name}/{key}", value.float())
            metric.reset()

    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: r[k] for k in ("id", "task", "generation", "prediction")}
                for r in self._rows(batch, self.generate(batch))]

    def open_predictions(self, path: str | None) -> None:
        trainer = self.module.trainer
        if path is None:
            path = str(Path(trainer.log_dir or ".") / "test_predictions.jsonl")
        if trainer.world_size > 1:
            path = path.replace(".jsonl", f".rank{trainer.global_rank}.jsonl")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed in close_predictions)
        self.predictions_path = path

    def close_predictions(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def analyze(self, frames: list[Any], text: str, tasks: list[str], **fields: Any) -> dict[str, Any]:
        m = self.module
        record = AMTRecord(id="analyze", source=fields.pop("source", "demo"), split="predict", text=text,
                           frames=list(frames), **fields)
        processor = m.backbone.processor
        examples = []
        for name in tasks:
            task = m.tasks[name]
            query = task.query(record, random.Random(0))
            pixels = processor.pixel_values(select_frames(record, task.media, len(frames)), where="analyze")
            examples.append({"id": record.id, "task": name, "query": query, "response": "",
                             "pixel_values": pixels.to(m.device), "record": record})
        batch = AMTCollator(processor, "generate")(examples)
        batch = {k: v.to(m.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        was_training = m.training
        m.eval()
        try:
            texts = self.generate(batch)
        finally:
            m.train(was_training)
        return {name: m.tasks[name].parse(t, record) for name, t in zip(tasks, texts, strict=True)}
