"""Evaluation as functions of (backbone, batch): batched greedy generation → task parsers → metrics.

The module owns the metrics and the prediction files; these functions only compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchmetrics import Metric

from emoverse.backbones.base import Backbone
from emoverse.data.batches import GenerationBatch
from emoverse.data.collator import AMTCollator
from emoverse.data.dataset import make_example
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance
from emoverse.tasks.base import Task

SPLITS = ("val", "test")


def generate(backbone: Backbone, batch: GenerationBatch, tasks: Mapping[str, Task],
             max_new_tokens: int | None = None) -> list[str]:
    """Greedy, KV-cached, batched answers; each row stops at its own task's budget (or `max_new_tokens`),
    so an answer does not depend on which tasks share its batch."""
    return backbone.generate(batch, [max_new_tokens or tasks[t].max_new_tokens for t in batch.tasks])


def answer(backbone: Backbone, batch: GenerationBatch, tasks: Mapping[str, Task],
           max_new_tokens: int | None = None) -> list[dict[str, Any]]:
    """Rows `{id, task, prompt, generation, prediction, record}`: generated and parsed answers."""
    rows = []
    for i, text in enumerate(generate(backbone, batch, tasks, max_new_tokens)):
        name, record = batch.tasks[i], batch.records[i]
        rows.append({"id": batch.ids[i], "task": name, "prompt": batch.queries[i], "generation": text,
                     "prediction": tasks[name].parse(text, record), "record": record})
    return rows


def score(rows: list[dict[str, Any]], tasks: Mapping[str, Task], metrics: Mapping[str, Metric]) -> None:
    """Add each row's gold `target` and update `metrics[task]` with the rows' predictions."""
    for name in dict.fromkeys(r["task"] for r in rows):
        task, mine = tasks[name], [r for r in rows if r["task"] == name]
        for r in mine:
            r["target"] = task.target(r["record"])
        task.update_metric(metrics[name], [r["prediction"] for r in mine], [r["target"] for r in mine])


def prediction_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as JSON data, without the record (the test and predict JSONL line)."""
    return {k: jsonable(v) for k, v in row.items() if k != "record"}


def analyze(backbone: Backbone, tasks: Mapping[str, Task], frames: Sequence[Any], text: str, names: Sequence[str], *,
            speaker: str | None = None, context: Sequence[Utterance | Mapping[str, Any]] = (),
            turn: int | None = None, emotion: str | None = None, num_frames: int = 4,
            peak_frame: int | None = None) -> dict[str, Any]:
    """`{task: parsed answer}` for one clip; see `EmoVerseModule.analyze` for the arguments."""
    unknown = [t for t in names if t not in tasks]
    if unknown or not names:
        raise ValueError(f"analyze: tasks={list(names)}; expected a non-empty list from this module's {list(tasks)}")
    utterances = [_utterance(u, k) for k, u in enumerate(context)]
    fields = {"speaker": speaker, "context": utterances, "turn": turn or len(utterances) + 1,
              "peak_frame": peak_frame, "frames": list(frames)}
    first = [t for t in names if t != "ecpe"]
    if "ecpe" in names:
        missing = [u.turn for u in utterances if u.emotion is None]
        if missing:
            raise ValueError(f"analyze: ecpe needs the emotion of every context utterance; turns {missing} have none")
        if emotion is None and "mer" not in first:
            if "mer" not in tasks:
                raise ValueError("analyze: ecpe needs the target utterance's emotion: pass emotion=... "
                                 "(or give the module the 'mer' task to predict it)")
            first.append("mer")
    answers = _answer(backbone, tasks, _analyze_record(text, emotion, fields), first, num_frames) if first else {}
    if "ecpe" in names:
        emotion = emotion or answers.get("mer")
        answers["ecpe"] = (None if emotion is None else  # MER answer unreadable: no target emotion to ask about
                           _answer(backbone, tasks, _analyze_record(text, emotion, fields), ["ecpe"], num_frames)["ecpe"])
    return {t: answers[t] for t in names}


def _answer(backbone: Backbone, tasks: Mapping[str, Task], record: AMTRecord, names: list[str],
            num_frames: int) -> dict[str, Any]:
    """Ask every task in `names` in one batch about `record` (eval mode, restored afterwards)."""
    examples = [make_example(record, tasks[name], backbone.processor, num_frames, seed=0, label=False) for name in names]
    batch = AMTCollator(backbone.processor, "generate")(examples).to(next(backbone.parameters()).device)
    was_training = backbone.training
    backbone.eval()
    try:
        texts = generate(backbone, batch, tasks)
    finally:
        backbone.train(was_training)
    return {name: tasks[name].parse(t, record) for name, t in zip(names, texts, strict=True)}


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
