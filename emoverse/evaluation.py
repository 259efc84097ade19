"""Evaluation as functions of (backbone, batch): batched greedy generation → task parsers → metrics.

A task with a closed set of answers (`Task.choices`: MSA, MER) can instead be answered by likelihood
(`closed="likelihood"`): the model's log-probability of each allowed answer given the prompt, the best one taken, as
lm-evaluation-harness scores multiple choice ("acc": summed log-probability of the answer's tokens). A zero-shot or
lightly trained model is then measured on what it knows rather than on whether it stops within the token budget.

The module owns the metrics and the prediction files; these functions only compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torchmetrics import Metric

from emoverse.backbones.base import Backbone
from emoverse.data.batches import GenerationBatch
from emoverse.tasks.base import Task

SPLITS = ("val", "test")
ClosedAnswers = Literal["generate", "likelihood"]
"""How a task with a closed answer set is answered: by generation (parsed), or by likelihood (`choose`)."""
CLOSED_ANSWERS: tuple[str, ...] = ("generate", "likelihood")


def generate(backbone: Backbone, batch: GenerationBatch, tasks: Mapping[str, Task],
             max_new_tokens: int | None = None) -> list[str]:
    """Greedy, KV-cached, batched answers; each row stops at its own task's budget (or `max_new_tokens`),
    so an answer does not depend on which tasks share its batch."""
    return backbone.generate(batch, [max_new_tokens or tasks[t].max_new_tokens for t in batch.tasks])


def answer(backbone: Backbone, batch: GenerationBatch, tasks: Mapping[str, Task],
           max_new_tokens: int | None = None, closed: ClosedAnswers = "generate") -> list[dict[str, Any]]:
    """Rows `{id, task, prompt, generation, prediction, record}`: generated and parsed answers. With
    `closed="likelihood"`, a row of a task with `choices` gets its most likely choice as `generation` (parsed as
    a generation would be) and every choice's log-probability as `choice_logprobs`; the other rows generate."""
    if closed not in CLOSED_ANSWERS:
        raise ValueError(f"closed={closed!r}; expected one of {CLOSED_ANSWERS}")
    names = batch.tasks
    ranked = closed == "likelihood" and any(tasks[t].choices for t in names)
    texts: list[str | None] = [None] * len(names)
    scores: list[dict[str, float] | None] = [None] * len(names)
    if ranked:
        scores = choose(backbone, batch, tasks)
        texts = [None if s is None else max(s, key=s.__getitem__) for s in scores]
    if any(t is None for t in texts):  # some row's task has an open answer (or generation was asked): generate
        generated = generate(backbone, batch, tasks, max_new_tokens)
        texts = [g if t is None else t for t, g in zip(texts, generated, strict=True)]
    rows = []
    for i, text in enumerate(texts):
        name, record = names[i], batch.records[i]
        row = {"id": batch.ids[i], "task": name, "prompt": batch.queries[i], "generation": text,
               "prediction": tasks[name].parse(text, record), "record": record}
        if scores[i] is not None:
            row["choice_logprobs"] = scores[i]
        rows.append(row)
    return rows


@torch.no_grad()
def choose(backbone: Backbone, batch: GenerationBatch, tasks: Mapping[str, Task]) -> list[dict[str, float] | None]:
    """Per row of a generation batch, the log-probability of each of its task's `choices` given its prompt (the
    summed log-probabilities of the choice's tokens, as lm-evaluation-harness scores multiple choice); None for a
    row whose task has an open answer.

    Rows are scored against every choice of each task in the batch (`Backbone.choice_logprobs`), so a batch of one
    task (evaluation batches are grouped by task) wastes nothing.
    """
    proc, names = backbone.processor, batch.tasks
    out: list[dict[str, float] | None] = [None] * len(names)
    for name in dict.fromkeys(names):
        options = tasks[name].choices
        if not options:
            continue
        logprobs = backbone.choice_logprobs(batch.inputs, [proc.tokenize(option) for option in options])
        for i, task in enumerate(names):
            if task == name:
                out[i] = {option: float(lp) for option, lp in zip(options, logprobs[i].tolist(), strict=True)}
    return out


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


def jsonable(value: Any) -> Any:
    """Parsed answers as JSON data: dataclasses (e.g. `ECPEAnswer`) become dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def rank_path(path: Path, trainer: Any) -> Path:
    """`preds.jsonl` → `preds.rank1.jsonl` under DDP (whatever the suffix), else `path`."""
    return path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}") if trainer.world_size > 1 else path
