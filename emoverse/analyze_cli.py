"""Answer every task about video clips: `emoverse analyze CLIP [CLIP ...] --ckpt_path CKPT`, one JSON line per clip.

Each clip is decoded as the AMT build decodes it (`emoverse.clip_input`); its transcript comes from `--text`,
`--transcripts` or `--asr`; all tasks of all clips are asked in batched generations. A bad clip is reported on
its own line (`"error"`) and the others are still answered; the exit status is 1 when any clip was refused.
docs/use.md describes the output.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoverse.clip_input import MAX_CLIP_SECONDS, ClipError, ClipInput, read_clip_input

if TYPE_CHECKING:
    from emoverse.analyze import UtteranceInput


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Transcripts by clip: a CSV with columns `clip,text` or a JSON object `{clip: text}`.

    Raises:
        ValueError: naming the file (and line) and the format expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--transcripts {path}: no such file; expected a CSV with columns clip,text or a "
                                "JSON object {clip: text}")
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"--transcripts {path}: not JSON ({err}); expected an object {{clip: text}}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"--transcripts {path}: expected a JSON object mapping each clip to its text")
        return dict(data)
    rows = list(csv.DictReader(raw.splitlines()))
    if not rows or not {"clip", "text"} <= set(rows[0]):
        raise ValueError(f"--transcripts {path}: expected a CSV header with columns clip,text (or a .json file)")
    out = {}
    for k, row in enumerate(rows):
        if not (row.get("clip") or "").strip():
            raise ValueError(f"--transcripts {path} line {k + 2}: empty clip; expected clip,text")
        out[row["clip"].strip()] = row.get("text") or ""
    return out


def transcript_for(clip: str, transcripts: dict[str, str]) -> str | None:
    """The text of `clip` in `transcripts`, matched by the path as given, its file name, or its stem."""
    p = Path(clip)
    for key in (clip, str(p), p.name, p.stem):
        if key in transcripts:
            return transcripts[key]
    return None


def read_context(path: str | Path) -> list[dict[str, Any]]:
    """The earlier turns of the dialogue (ecpe): a JSON list of `{speaker, text, emotion}`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--context {path}: {err}; expected a JSON list of {{speaker, text, emotion}} turns") from None
    if not isinstance(data, list) or not all(isinstance(u, dict) for u in data):
        raise ValueError(f"--context {path}: expected a JSON list of {{speaker, text, emotion}} turns")
    return data


def clip_line(clip: str, decoded: ClipInput, text: str, text_from: str, answers: dict[str, dict[str, Any]]) -> dict:
    """The JSON line of an answered clip (docs/use.md)."""
    from emoverse.evaluation import jsonable

    return {"clip": clip, "text": text, "text_from": text_from, "duration": round(decoded.duration, 3),
            "frames": {"times": [round(t, 3) for t in decoded.times], "peak_frame": decoded.peak_frame,
                       "peak_from": decoded.peak_source},
            "audio_seconds": None if decoded.audio is None else round(len(decoded.audio) / 16000, 3),
            "answers": {t: jsonable(a["prediction"]) for t, a in answers.items()},
            "generations": {t: a["generation"] for t, a in answers.items()},
            "warnings": decoded.warnings}


def error_line(clip: str, err: Exception) -> dict[str, Any]:
    """The JSON line of a refused clip."""
    return {"clip": clip, "error": str(err), "reason": getattr(err, "reason", "bad_input")}


def prepare_clip(clip: str, args: argparse.Namespace, transcripts: dict[str, str],
                 transcriber: Callable[[Any], str] | None, listens: bool,
                 openface: str | None) -> tuple[ClipInput, str, str]:
    """Decode one clip and find its utterance: (decoded clip, text, where the text came from).

    Raises:
        ClipError: the clip is bad input (`CLIP_FAULTS`), or has no transcript.
    """
    text, text_from = (args.text, "text") if args.text else (transcript_for(clip, transcripts), "transcripts")
    if text is not None and not text.strip():
        raise ClipError("no_text", f"{clip}: empty transcript in {args.transcripts}; expected the utterance")
    if text is None and transcriber is None:
        where = f"not in {args.transcripts}" if args.transcripts else "no transcript"
        raise ClipError("no_text", f"{clip}: {where}; expected --text, a --transcripts entry or --asr MODEL")
    why = "the backbone hears" if listens else ("--asr transcribes it" if text is None else None)
    decoded = read_clip_input(clip, args.clip_frames, args.frame_size, audio_for=why, openface=openface)
    if text is None:
        text, text_from = transcriber(decoded.audio), "asr"
        if not text:
            raise ClipError("no_text", f"{clip}: --asr {args.asr} heard no words; expected speech, or pass --text")
    return decoded, text, text_from


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emoverse analyze", description=__doc__.splitlines()[0])
    p.add_argument("clips", nargs="+", help=f"video files (each at most {MAX_CLIP_SECONDS:g} s: one utterance)")
    model = p.add_argument_group("the model (one of)")
    model.add_argument("--ckpt_path", help="a checkpoint written by emoverse fit")
    model.add_argument("--model", help="a folder written by emoverse export")
    model.add_argument("--config", help="with --model: the run's config.yaml (its tasks and task_args)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="the utterance (every clip's, when several)")
    text.add_argument("--transcripts", help="a CSV with columns clip,text or a JSON object {clip: text}")
    p.add_argument("--asr", help="a transformers automatic-speech-recognition model (folder or hub id, e.g. "
                                 "openai/whisper-small) that transcribes clips without a given text")
    p.add_argument("--openface", nargs="+", help="OpenFace 2.x CSVs, one per clip in order: the FER peak frame is "
                                                 "their AU-sum argmax (default: the face-based choice, docs/use.md)")
    p.add_argument("--tasks", nargs="+", help="tasks to ask (default: all of the model's)")
    p.add_argument("--context", help="ecpe: a JSON list of the earlier turns {speaker, text, emotion}")
    p.add_argument("--speaker", help="who speaks in the clips (shown in ecpe's conversation)")
    p.add_argument("--out", help="also write the JSON lines to this file")
    p.add_argument("--clip_frames", type=int, default=8, help="frames decoded per clip, as the AMT build's num_frames "
                                                               "(the peak frame is added)")
    p.add_argument("--frame_size", type=int, default=448, help="decoded frames' side, as the AMT build's frame_size")
    p.add_argument("--num_frames", type=int, default=4, help="frames a video prompt shows (the datamodule's num_frames)")
    p.add_argument("--batch_size", type=int, default=16, help="prompts per generation batch")
    p.add_argument("--closed_answers", choices=["generate", "likelihood"], default=None,
                   help="msa and mer by generation or by the likelihood of each label (default: the model's setting)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    """`emoverse analyze CLIP ... --ckpt_path CKPT`: one JSON line per clip on stdout (and `--out`)."""
    args = parser().parse_args(argv)
    if args.openface and len(args.openface) != len(args.clips):
        raise ValueError(f"--openface: {len(args.openface)} CSVs for {len(args.clips)} clips; expected one per clip, "
                         "in the clips' order")
    transcripts = read_transcripts(args.transcripts) if args.transcripts else {}
    context = read_context(args.context) if args.context else []
    import torch

    from emoverse.analyze import UtteranceInput, answer_utterances, check_names, check_prompts, context_turns, hears, load_module

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = load_module(args.ckpt_path, args.model, args.config, map_location=device)
    names = check_names(module.tasks, args.tasks or list(module.tasks))
    turns = context_turns(context)
    listens = hears(module.tasks, names)
    transcriber = None
    if args.asr:
        from emoverse.asr import Transcriber

        transcriber = Transcriber(args.asr, device=device)

    lines: list[dict[str, Any] | None] = [None] * len(args.clips)
    ready: list[tuple[int, ClipInput, str, str, UtteranceInput]] = []
    for k, clip in enumerate(args.clips):
        try:
            decoded, text, text_from = prepare_clip(clip, args, transcripts, transcriber, listens,
                                                    args.openface[k] if args.openface else None)
            u = UtteranceInput(text=text, frames=decoded.frames, audio=decoded.audio if listens else None,
                               peak_frame=decoded.peak_frame, speaker=args.speaker, context=turns)
            try:
                check_prompts(module.backbone, module.tasks, u, names, args.num_frames)
            except ValueError as err:
                raise ClipError("prompt", f"{clip}: {err}") from None
            ready.append((k, decoded, text, text_from, u))
        except ValueError as err:  # ClipError and the OpenFace / audio checks: this clip only
            lines[k] = error_line(clip, err)

    inputs = [u for *_, u in ready]
    closed = args.closed_answers or module.hparams.get("closed_answers", "generate")
    answers = answer_utterances(module.backbone, module.tasks, inputs, names, args.num_frames, args.batch_size, closed)
    for (k, decoded, text, text_from, _), got in zip(ready, answers, strict=True):
        lines[k] = clip_line(args.clips[k], decoded, text, text_from, got)

    out = open(args.out, "w", encoding="utf-8") if args.out else None  # noqa: SIM115 - closed below
    try:
        for line in lines:
            text = json.dumps(line, ensure_ascii=False)
            print(text)
            if out is not None:
                out.write(text + "\n")
    finally:
        if out is not None:
            out.close()
    refused = [line for line in lines if line and "error" in line]
    faceless = sum(1 for line in lines if line and line.get("frames", {}).get("peak_from") == "middle")
    summary = f"emoverse analyze: answered {len(lines) - len(refused)} of {len(lines)} clips"
    if refused:
        summary += f"; refused {len(refused)}: " + "; ".join(line["error"] for line in refused)
    if faceless:
        summary += f"; {faceless} with no face found (fer describes their middle frame)"
    print(summary + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if refused else 0
