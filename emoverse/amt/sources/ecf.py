"""ECF 2.0 / ECF 1.0 (Emotion-Cause-in-Friends): conversations with emotions and emotion-cause pairs.

Two formats, chosen by the file suffix:
- `.json`: the SemEval-2024 Task 3 release, a list of `{"conversation_ID", "conversation": [{"utterance_ID",
  "text", "speaker", "emotion", ["video_name"]}], "emotion-cause_pairs": [["5_surprise", "2"], ...]}`;
  Subtask 1 pairs name the cause as `"2_<span text>"` (the turn before the first `_` is used).
- `.txt`: the ECF 1.0 text format: a `conversation_id n_turns` line, a pair line `(3,1),(3,3)` (empty when
  the conversation has none), then `turn | speaker | emotion | text | source` lines.

One record per utterance: its emotion (MER and the ECPE target's emotion) and its cause pairs
(`[]` = annotated, no cause; SemEval counts neutral and cause-less turns too). The context is the
whole conversation (every other turn) by default: in the ECF 2.0 test set 86 of 2,462 pairs have
their cause after the emotion turn, which a context of earlier turns could never name.
Duplicate pairs are merged (as the SemEval scorer does) and counted. A pair whose turn does not
exist, or whose emotion differs from its emotion turn's label, or a turn whose emotion is not one
of the seven (that turn is dropped), removes the ECPE label of that conversation's records
(counted, `bad_cause_pair` / `pair_emotion_mismatch` / `invalid_turn_emotion`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from emoverse.amt.sources.base import Candidate, Clip, Rejected
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance

_PAIR = re.compile(r"\((\d+),(\d+)\)")


@dataclass
class Turn:
    turn: int
    speaker: str
    emotion: str
    text: str
    video_name: str | None = None


@dataclass
class Conversation:
    id: int
    turns: list[Turn]
    pairs: list[tuple[int, int, str | None]]  # (emotion_turn, cause_turn, emotion or None = the turn's label)
    origin: str


@dataclass
class ECFSource:
    """ECF conversations and, optionally, their clips.

    Attributes:
        files: split -> file (`.json` SemEval-2024 Task 3, or `.txt` ECF 1.0).
        videos: folder of `dia{conversation}utt{utterance}.mp4` clips (the ECF 2.0 `video_name`s); None: no media.
        openface: folder of OpenFace CSVs named like the clips (`dia{c}utt{u}.csv`); None: no FER labels.
        context: "conversation" (every other turn, for ECPE) or "preceding" (earlier turns only).
    """

    files: dict[str, str]
    videos: str | None = None
    openface: str | None = None
    context: Literal["conversation", "preceding"] = "conversation"

    name = "ecf"

    def __post_init__(self) -> None:
        if self.context not in ("conversation", "preceding"):
            raise ValueError(f"ECFSource.context={self.context!r}: expected 'conversation' or 'preceding'")
        self.duplicate_pairs = 0

    def read(self) -> Iterator[Candidate | Rejected]:
        """Every utterance of every conversation as a `Candidate` (or `Rejected`: empty text, unknown emotion)."""
        for split, name in self.files.items():
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"ECF source: {path} (split {split!r}) not found")
            conversations = read_ecf_json(path) if path.suffix == ".json" else read_ecf_text(path)
            for conv in conversations:
                yield from self._records(conv, split)

    def _records(self, conv: Conversation, split: str) -> Iterator[Candidate | Rejected]:
        by_turn = {t.turn: t for t in conv.turns}
        removed: tuple[str, ...] = ()
        pairs: dict[int, list[tuple[int, int, str]]] = {t: [] for t in by_turn}
        seen: set[tuple[int, int]] = set()
        for emotion_turn, cause_turn, emotion in conv.pairs:
            if emotion_turn not in by_turn or cause_turn not in by_turn:
                removed = ("bad_cause_pair",)
                break
            label = by_turn[emotion_turn].emotion
            if emotion is not None and emotion != label:
                removed = ("pair_emotion_mismatch",)
                break
            if (emotion_turn, cause_turn) in seen:
                self.duplicate_pairs += 1
                continue
            seen.add((emotion_turn, cause_turn))
            pairs[emotion_turn].append((emotion_turn, cause_turn, label))
        if not removed and any(t.emotion not in EMOTIONS for t in conv.turns):
            removed = ("invalid_turn_emotion",)  # the pairs cannot be scored against a turn that is not a record
        for t in conv.turns:
            rid = f"ecf_c{conv.id}_u{t.turn}"
            origin = f"{conv.origin} turn {t.turn}"
            if not t.text.strip():
                yield Rejected(rid, self.name, split, "empty_text", origin)
                continue
            if t.emotion not in EMOTIONS:
                yield Rejected(rid, self.name, split, "label_out_of_range", origin, f"emotion={t.emotion!r}")
                continue
            context = [Utterance(turn=u.turn, speaker=u.speaker, text=u.text,
                                 emotion=u.emotion if u.emotion in EMOTIONS else None)
                       for u in conv.turns if u.turn != t.turn and (self.context == "conversation" or u.turn < t.turn)]
            record = AMTRecord(
                id=rid, source="ecf", split=split, text=t.text.strip(), speaker=t.speaker or None,
                labels=AMTLabels(emotion=t.emotion, cause_pairs=None if removed else sorted(pairs[t.turn])),
                dialogue_id=f"ecf_c{conv.id}", turn=t.turn, context=context)
            clip = None
            if self.videos is not None:
                video = t.video_name or f"dia{conv.id}utt{t.turn}.mp4"
                clip = Clip(video=Path(self.videos) / video,
                            au_csv=Path(self.openface) / f"{Path(video).stem}.csv" if self.openface else None)
            yield Candidate(record, clip, origin, removed)


def read_ecf_json(path: Path) -> list[Conversation]:
    """Conversations of a SemEval-2024 Task 3 JSON file; errors name the file and conversation."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        where = f"{path} conversation #{i}"
        try:
            cid = int(item["conversation_ID"])
            where = f"{path} conversation_ID {cid}"
            turns = [_json_turn(u) for u in item["conversation"]]
            pairs = [_json_pair(p) for p in item.get("emotion-cause_pairs", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{where}: expected conversation_ID, conversation [{{utterance_ID, text, speaker, "
                             f"emotion}}] and emotion-cause_pairs [[\"5_surprise\", \"2\"], ...] ({err!r})") from err
        out.append(Conversation(cid, turns, pairs, where))
    return out


def _json_turn(u: dict[str, Any]) -> Turn:
    return Turn(turn=int(u["utterance_ID"]), speaker=str(u.get("speaker", "")), emotion=str(u["emotion"]).lower(),
                text=str(u["text"]), video_name=u.get("video_name"))


def _json_pair(pair: list[str]) -> tuple[int, int, str]:
    emotion_part, cause_part = pair
    turn, _, emotion = emotion_part.partition("_")
    return int(turn), int(cause_part.partition("_")[0]), emotion.lower()


def read_ecf_text(path: Path) -> list[Conversation]:
    """Conversations of an ECF 1.0 text file (`train.txt`, `all_data_pair.txt`, ...)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        head = lines[i].split()
        if len(head) != 2 or not all(w.isdigit() for w in head):
            raise ValueError(f"{path} line {i + 1}: expected 'conversation_id number_of_turns', got {lines[i]!r}")
        cid, n = int(head[0]), int(head[1])
        if i + 2 + n > len(lines):
            raise ValueError(f"{path} line {i + 1}: conversation {cid} announces {n} turns but the file ends")
        pair_line = lines[i + 1].strip()
        pairs = [(int(a), int(b), None) for a, b in _PAIR.findall(pair_line)]
        if pair_line and not pairs:
            raise ValueError(f"{path} line {i + 2}: expected pairs like '(3,1),(3,3)' or an empty line, got {pair_line!r}")
        turns = []
        for k in range(n):
            line_no = i + 3 + k
            parts = lines[line_no - 1].split(" | ")
            if len(parts) < 5 or not parts[0].strip().isdigit():
                raise ValueError(f"{path} line {line_no}: expected 'turn | speaker | emotion | text | source', "
                                 f"got {lines[line_no - 1]!r}")
            turns.append(Turn(turn=int(parts[0]), speaker=parts[1].strip(), emotion=parts[2].strip().lower(),
                              text=" | ".join(parts[3:-1]).strip()))
        out.append(Conversation(cid, turns, pairs, f"{path} line {i + 1} conversation {cid}"))
        i += 2 + n
    return out
