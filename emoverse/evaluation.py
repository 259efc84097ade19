"""Evaluation as functions of (backbone, batch): batched greedy generation → task parsers → metrics.

A task with a closed set of answers (`Task.choices`: MSA, MER) can instead be answered by likelihood
(`closed="likelihood"`): the model's log-probability of each allowed answer given the prompt, the best one taken, as
lm-evaluation-harness scores multiple choice ("acc": summed log-probability of the answer's tokens). A zero-shot or
lightly trained model is then measured on what it knows rather than on whether it stops within the token budget.

The module owns the metrics and the prediction files; these functions only compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torchmetrics import Metric

from emoverse.backbones.base import Backbone
from emoverse.data.collator import AMTCollator
from emoverse.data.dataset import make_example
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance
from emoverse.tasks.base import Task

SPLITS = ("val", "test")
ClosedAnswers = Literal["generate", "likelihood"]
"""How a task with a closed answer set is answered: by generation (parsed), or by likelihood (`choose`)."""
CLOSED_ANSWERS: tuple[str, ...] = ("generate", "likelihood")


def generate(backbone: Backbone, batch: Mapping[str, Any], tasks: Mapping[str, Task],
             max_new_tokens: int | None = None) -> list[str]:
    """Greedy, KV-cached, batched answers; each row stops at its own task's budget (or `max_new_tokens`),
    so an answer does not depend on which tasks share its batch."""
    return backbone.generate(batch, [max_new_tokens or tasks[t].max_new_tokens for t in batch["tasks"]])


def answer(backbone: Backbone, batch: Mapping[str, Any], tasks: Mapping[str, Task],
           max_new_tokens: int | None = None, closed: ClosedAnswers = "generate") -> list[dict[str, Any]]:
    """Rows `{id, task, prompt, generation, prediction, record}`: generated and parsed answers. With
    `closed="likelihood"`, a row of a task with `choices` gets its most likely choice as `generation` (parsed as
    a generation would be) and every choice's log-probability as `choice_logprobs`; the other rows generate."""
    if closed not in CLOSED_ANSWERS:
        raise ValueError(f"closed={closed!r}; expected one of {CLOSED_ANSWERS}")
    names = batch["tasks"]
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
        name, record = names[i], batch["records"][i]
        row = {"id": batch["ids"][i], "task": name, "prompt": batch["queries"][i], "generation": text,
               "prediction": tasks[name].parse(text, record), "record": record}
        if scores[i] is not None:
            row["choice_logprobs"] = scores[i]
        rows.append(row)
    return rows


@torch.no_grad()
def choose(backbone: Backbone, batch: Mapping[str, Any], tasks: Mapping[str, Task]) -> list[dict[str, float] | None]:
    """Per row of a generation batch, the log-probability of each of its task's `choices` given its prompt (the
    summed log-probabilities of the choice's tokens, as lm-evaluation-harness scores multiple choice); None for a
    row whose task has an open answer.

    Rows are scored against every choice of each task in the batch (`Backbone.choice_logprobs`), so a batch of one
    task (evaluation batches are grouped by task) wastes nothing.
    """
    proc, names = backbone.processor, batch["tasks"]
    out: list[dict[str, float] | None] = [None] * len(names)
    for name in dict.fromkeys(names):
        options = tasks[name].choices
        if not options:
            continue
        logprobs = backbone.choice_logprobs(batch["inputs"], [proc.tokenize(option) for option in options])
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


def analyze(backbone: Backbone, tasks: Mapping[str, Task], frames: Sequence[Any], text: str, names: Sequence[str], *,
            speaker: str | None = None, context: Sequence[Utterance | Mapping[str, Any]] = (),
            turn: int | None = None, emotion: str | None = None, num_frames: int = 4,
            peak_frame: int | None = None, closed: ClosedAnswers = "generate") -> dict[str, Any]:
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
    answers = _answer(backbone, tasks, _analyze_record(text, emotion, fields), first, num_frames, closed) if first else {}
    if "ecpe" in names:
        emotion = emotion or answers.get("mer")
        answers["ecpe"] = (None if emotion is None else  # MER answer unreadable: no target emotion to ask about
                           _answer(backbone, tasks, _analyze_record(text, emotion, fields), ["ecpe"], num_frames,
                                   closed)["ecpe"])
    return {t: answers[t] for t in names}


def _answer(backbone: Backbone, tasks: Mapping[str, Task], record: AMTRecord, names: list[str],
            num_frames: int, closed: ClosedAnswers = "generate") -> dict[str, Any]:
    """Ask every task in `names` in one batch about `record` (eval mode, restored afterwards)."""
    examples = [make_example(record, tasks[name], backbone.processor, num_frames, seed=0, label=False) for name in names]
    batch = move_to(AMTCollator(backbone.processor, "generate")(examples), next(backbone.parameters()).device)
    was_training = backbone.training
    backbone.eval()
    batch = {**batch, "records": [record] * len(names)}
    try:
        rows = answer(backbone, batch, tasks, closed=closed)
    finally:
        backbone.train(was_training)
    return {name: row["prediction"] for name, row in zip(names, rows, strict=True)}


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its model inputs on `device`."""
    return {**batch, "inputs": {k: v.to(device) for k, v in batch["inputs"].items()}}


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
