"""Answering every task about clips a person brings: frames (or a video file), the utterance, and the audio.

`answer_utterances` asks all tasks of all given utterances in batched generations (ecpe, which needs the
target utterance's emotion, in a second round after mer unless the emotion is given); `analyze` is
`EmoVerseModule.analyze`; `load_module` builds a module from a training checkpoint or an export folder.
The prompts are the tasks' own, built by `make_example` and batched by `AMTCollator` exactly as in
evaluation, so an answer here is the answer `emoverse test` would give to the same record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from emoverse import evaluation
from emoverse.data.collator import AMTCollator
from emoverse.data.dataset import make_example
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance
from emoverse.evaluation import ClosedAnswers

if TYPE_CHECKING:
    from emoverse.backbones.base import Backbone
    from emoverse.module import EmoVerseModule
    from emoverse.tasks.base import Task

RECORD_ID = "analyze"
"""The id of every analysed record: a prompt's wording variant is seeded by (id, task), so a clip's prompts do not
depend on its position in a batch."""


@dataclass
class UtteranceInput:
    """One utterance to answer about.

    Attributes:
        text: what is said (the transcript).
        frames: RGB frames in time order.
        audio: 16 kHz mono float32 waveform, or None.
        peak_frame: index of the most expressive frame (fer's image; default: the middle one).
        speaker: who says it (shown in ecpe's conversation).
        context: ecpe only: the earlier turns, each with its emotion.
        turn: ecpe only: the 1-based turn of `text` (default: `len(context) + 1`).
        emotion: ecpe only: the emotion of `text` (default: the mer answer).
    """

    text: str
    frames: list[Any]
    audio: np.ndarray | None = None
    peak_frame: int | None = None
    speaker: str | None = None
    context: list[Utterance] = field(default_factory=list)
    turn: int | None = None
    emotion: str | None = None


def hears(tasks: Mapping[str, Task], names: Sequence[str]) -> bool:
    """Whether any of the tasks `names` shows the audio (so a clip's audio track must be decoded)."""
    return any("audio" in tasks[n].media for n in names)


def context_turns(context: Sequence[Utterance | Mapping[str, Any]]) -> list[Utterance]:
    """Dialogue turns from `Utterance`s or dicts `{speaker, text, emotion, turn (default: its 1-based position)}`."""
    turns = []
    for k, u in enumerate(context):
        if isinstance(u, Utterance):
            turns.append(u)
            continue
        try:
            turns.append(Utterance(**{"turn": k + 1, **u}))
        except TypeError as err:
            raise ValueError(f"analyze: context[{k}]={dict(u)!r}: {err}; expected keys speaker, text, emotion "
                             "and optionally turn") from None
    return turns


def _record(u: UtteranceInput, emotion: str | None) -> AMTRecord:
    if emotion is not None and emotion not in EMOTIONS:
        raise ValueError(f"analyze: emotion={emotion!r}; expected one of {EMOTIONS}")
    return AMTRecord(id=RECORD_ID, source="demo", split="predict", text=u.text, labels=AMTLabels(emotion=emotion),
                     speaker=u.speaker, context=list(u.context), turn=u.turn or len(u.context) + 1,
                     frames=list(u.frames), peak_frame=u.peak_frame, audio=u.audio)


def check_names(tasks: Mapping[str, Task], names: Sequence[str]) -> list[str]:
    """`names` if they are a non-empty list of the module's tasks."""
    unknown = [t for t in names if t not in tasks]
    if unknown or not names:
        raise ValueError(f"analyze: tasks={list(names)}; expected a non-empty list from this module's {list(tasks)}")
    return list(names)


def answer_utterances(backbone: Backbone, tasks: Mapping[str, Task], inputs: Sequence[UtteranceInput],
                      names: Sequence[str], num_frames: int = 4, batch_size: int = 16,
                      closed: ClosedAnswers = "generate") -> list[dict[str, dict[str, Any]]]:
    """Ask every task in `names` about every input: per input `{task: {"generation": text, "prediction": parsed}}`.

    With `closed="likelihood"` a task with a closed answer set (msa, mer) answers with its most likely choice
    (`evaluation.answer`, as `emoverse test` does with `closed_answers: likelihood`).

    All (input, task) pairs but ecpe go through batched generation (`batch_size` rows at a time); ecpe then
    asks about each input's emotion (given, or the mer answer: its prediction is None when that is unreadable).

    Raises:
        ValueError: an unknown task, or ecpe's context turns without their emotions.
    """
    names = check_names(tasks, names)
    first = [t for t in names if t != "ecpe"]
    rows: list[tuple[int, str, AMTRecord]] = []
    for i, u in enumerate(inputs):
        asked = list(first)
        if "ecpe" in names:
            missing = [c.turn for c in u.context if c.emotion is None]
            if missing:
                raise ValueError(f"analyze: ecpe needs the emotion of every context utterance; turns {missing} have none")
            if u.emotion is None and "mer" not in asked:
                if "mer" not in tasks:
                    raise ValueError("analyze: ecpe needs the target utterance's emotion: pass emotion=... "
                                     "(or give the module the 'mer' task to predict it)")
                asked.append("mer")
        record = _record(u, u.emotion)
        rows += [(i, t, record) for t in asked]
    out: list[dict[str, dict[str, Any]]] = [{} for _ in inputs]
    for (i, t, _), got in zip(rows, _generate(backbone, tasks, [(t, r) for _, t, r in rows], num_frames, batch_size, closed),
                              strict=True):
        out[i][t] = got
    if "ecpe" in names:
        second = []
        for i, u in enumerate(inputs):
            emotion = u.emotion or out[i]["mer"]["prediction"]
            if emotion is None:  # mer unreadable: no target emotion to ask about
                out[i]["ecpe"] = {"generation": None, "prediction": None}
            else:
                second.append((i, _record(u, emotion)))
        got = _generate(backbone, tasks, [("ecpe", r) for _, r in second], num_frames, batch_size, closed)
        for (i, _), answer in zip(second, got, strict=True):
            out[i]["ecpe"] = answer
    return [{t: answers[t] for t in names} for answers in out]


def check_prompts(backbone: Backbone, tasks: Mapping[str, Task], u: UtteranceInput, names: Sequence[str],
                  num_frames: int = 4) -> None:
    """Build `u`'s prompts for `names` without generating, so one input whose prompt cannot be built (longer than
    the context, frames the processor refuses) is reported alone instead of stopping a batch.

    Raises:
        ValueError: from `make_example`, naming the task.
    """
    record = _record(u, u.emotion or ("neutral" if "ecpe" in names else None))
    for name in check_names(tasks, names):
        make_example(record, tasks[name], backbone.processor, num_frames, seed=0, label=False)


def _generate(backbone: Backbone, tasks: Mapping[str, Task], pairs: list[tuple[str, AMTRecord]], num_frames: int,
              batch_size: int, closed: ClosedAnswers = "generate") -> list[dict[str, Any]]:
    """Generate and parse (task, record) pairs in batches, in eval mode (restored afterwards)."""
    answers: list[dict[str, Any]] = []
    if not pairs:
        return answers
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            examples = [make_example(r, tasks[t], backbone.processor, num_frames, seed=0, label=False) for t, r in chunk]
            batch = AMTCollator(backbone.processor, "generate")(examples).to(device)
            answers += [{"generation": row["generation"], "prediction": row["prediction"]}
                        for row in evaluation.answer(backbone, batch, tasks, closed=closed)]
    finally:
        backbone.train(was_training)
    return answers


def analyze(backbone: Backbone, tasks: Mapping[str, Task], clip: str | Path | Sequence[Image.Image], text: str,
            names: Sequence[str], *, audio: np.ndarray | None = None, speaker: str | None = None,
            context: Sequence[Utterance | Mapping[str, Any]] = (), turn: int | None = None, emotion: str | None = None,
            num_frames: int = 4, peak_frame: int | None = None, openface: str | Path | None = None,
            closed: ClosedAnswers = "generate") -> dict[str, Any]:
    """`{task: parsed answer}` for one clip given as a video file or as frames (plus audio); see
    `EmoVerseModule.analyze`."""
    names = check_names(tasks, names)
    if isinstance(clip, (str, Path)):
        from emoverse.clip_input import read_clip_input

        decoded = read_clip_input(clip, audio_for="the backbone hears" if hears(tasks, names) and audio is None else None,
                                  openface=openface)
        frames, audio = decoded.frames, audio if audio is not None else decoded.audio
        peak_frame = decoded.peak_frame if peak_frame is None else peak_frame
    else:
        frames = list(clip)
    u = UtteranceInput(text=text, frames=frames, audio=audio, peak_frame=peak_frame, speaker=speaker,
                       context=context_turns(context), turn=turn, emotion=emotion)
    return {t: a["prediction"] for t, a in answer_utterances(backbone, tasks, [u], names, num_frames, closed=closed)[0].items()}


def load_module(ckpt_path: str | Path | None = None, model: str | Path | None = None,
                config: str | Path | None = None, map_location: str = "cpu") -> EmoVerseModule:
    """A trained module from a training checkpoint (`emoverse fit`'s .ckpt) or an export folder (`emoverse export`).

    Args:
        ckpt_path: a checkpoint (weights_only load; its hyperparameters rebuild the backbone and tasks).
        model: an `emoverse export` folder: a composed one (`composed.json`) or a transformers VLM folder.
        config: with `model`: the run's `config.yaml` (or any YAML with `model.init_args`), whose `tasks` and
            `task_args` the module takes (default: all five tasks, showing what the backbone takes).
        map_location: the device to load onto.

    Raises:
        FileNotFoundError / ValueError: naming the path and what was expected.
    """
    from emoverse.module import EmoVerseModule

    if (ckpt_path is None) == (model is None):
        raise ValueError("give exactly one of --ckpt_path (a .ckpt written by emoverse fit) and --model "
                         "(a folder written by emoverse export)")
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"{ckpt_path}: no such file; expected a .ckpt written by emoverse fit")
        if config is not None:
            raise ValueError("--config goes with --model (an export folder); a checkpoint holds its own settings")
        module = EmoVerseModule.load_from_checkpoint(str(ckpt_path), map_location=map_location, weights_only=True)
        return module.eval()
    folder = Path(model)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; expected a folder written by emoverse export")
    from emoverse.export import COMPOSED_CONFIG, load_composed

    if (folder / COMPOSED_CONFIG).exists():
        backbone = load_composed(folder)
    elif (folder / "config.json").exists():
        from emoverse.backbones import HFVisionLanguageBackbone

        backbone = HFVisionLanguageBackbone(str(folder))
    else:
        raise ValueError(f"{folder}: neither {COMPOSED_CONFIG} nor config.json; expected a folder written by "
                         "emoverse export")
    settings = _model_settings(config) if config is not None else {}
    module = EmoVerseModule(backbone, **settings)
    return module.to(map_location).eval()


def _model_settings(config: str | Path) -> dict[str, Any]:
    """`tasks` and `task_args` of a run config's `model.init_args`."""
    import yaml

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected the run's config.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    init = ((data.get("model") or {}).get("init_args") or {}) if isinstance(data, dict) else {}
    if not isinstance(init, dict):
        raise ValueError(f"{path}: model.init_args is {type(init).__name__}; expected a mapping")
    return {k: init[k] for k in ("tasks", "task_args") if init.get(k) is not None}
