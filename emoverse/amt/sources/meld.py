"""MELD (Poria et al., ACL 2019): the official `{train,dev,test}_sent_emo.csv` files.

One record per utterance: the emotion labels MER; with `sentiment_as_msa`, the sentiment word
labels MSA as a sign (positive → +1.0, neutral → 0.0, negative → -1.0), which is all that
Acc2 reads from a score. With `context: preceding` each record carries its dialogue's earlier turns (speaker and
text, no emotion: MER with context must not read the gold labels of the turns it sees). Clips are
`{videos[split]}/dia{Dialogue_ID}_utt{Utterance_ID}.mp4` (the MELD.Raw folders `train_splits/`,
`dev_splits_complete/`, `output_repeated_splits_test/`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from emoverse.amt.sources.base import Candidate, Clip, Rejected, need_dir, read_table
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance

COLUMNS: tuple[str, ...] = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
SENTIMENT_SIGN: dict[str, float] = {"positive": 1.0, "neutral": 0.0, "negative": -1.0}


@dataclass
class MELDSource:
    """The MELD annotation CSVs and, optionally, the clips.

    Attributes:
        root: folder with the CSVs.
        files: split -> CSV name inside `root`.
        videos: split -> folder of `dia{D}_utt{U}.mp4` clips; None: no media (text-only records).
        openface: split -> folder of OpenFace CSVs `dia{D}_utt{U}.csv`; None: no FER labels.
        sentiment_as_msa: label MSA with the sentiment's sign (see the module docstring).
        context: "none" (the released EmoVerse prompts show the utterance alone) or "preceding" (each record
            carries the earlier turns of its dialogue, by MELD's Dialogue_ID and Utterance_ID, without their labels).
    """

    root: str
    files: dict[str, str] = field(default_factory=lambda: {
        "train": "train_sent_emo.csv", "val": "dev_sent_emo.csv", "test": "test_sent_emo.csv"})
    videos: dict[str, str] | None = None
    openface: dict[str, str] | None = None
    sentiment_as_msa: bool = False
    context: Literal["none", "preceding"] = "none"

    name = "meld"

    def __post_init__(self) -> None:
        if self.context not in ("none", "preceding"):
            raise ValueError(f"MELD source: context={self.context!r}; expected 'none' or 'preceding'")

    def openface_dir(self, split: str) -> Path | None:
        return Path(self.openface[split]) if self.openface and split in self.openface else None

    def read(self) -> Iterator[Candidate | Rejected]:
        """Every CSV row as a `Candidate` or a `Rejected`, split by split."""
        root = need_dir(self.root, "MELD source")
        for split, name in self.files.items():
            path = root / name
            table = read_table(path, COLUMNS, "a MELD *_sent_emo.csv")
            turns: dict[str, list[Utterance]] = {}  # dialogue id -> its turns read so far (the CSV is in turn order)
            for i, row in enumerate(table.to_dict("records")):
                out = self._row(row, split, f"{path} line {i + 2}")
                if self.context == "preceding" and isinstance(out, Candidate):
                    record = out.record
                    seen = turns.setdefault(record.dialogue_id, [])
                    record.context = [u for u in seen if u.turn < record.turn]
                    seen.append(Utterance(turn=record.turn, speaker=record.speaker or "Speaker", text=record.text))
                yield out

    def _row(self, row: dict[str, str], split: str, origin: str) -> Candidate | Rejected:
        try:
            dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except ValueError as err:
            raise ValueError(f"{origin}: Dialogue_ID/Utterance_ID must be integers ({err})") from err
        rid = f"meld_{split}_d{dialogue}_u{utterance}"
        text, emotion = row["Utterance"].strip(), row["Emotion"].strip().lower()
        if not text:
            return Rejected(rid, self.name, split, "empty_text", origin)
        if emotion not in EMOTIONS:
            return Rejected(rid, self.name, split, "label_out_of_range", origin, f"Emotion={row['Emotion']!r}")
        sentiment = None
        if self.sentiment_as_msa:
            word = row["Sentiment"].strip().lower()
            if word not in SENTIMENT_SIGN:
                return Rejected(rid, self.name, split, "label_out_of_range", origin, f"Sentiment={row['Sentiment']!r}")
            sentiment = SENTIMENT_SIGN[word]
        record = AMTRecord(id=rid, source="meld", split=split, text=text, speaker=row["Speaker"].strip() or None,
                           labels=AMTLabels(sentiment=sentiment, emotion=emotion),
                           dialogue_id=f"meld_{split}_d{dialogue}", turn=utterance + 1)
        clip = None
        if self.videos is not None:
            if split not in self.videos:
                raise ValueError(f"MELD source: videos has no folder for split {split!r} (has {sorted(self.videos)})")
            stem = f"dia{dialogue}_utt{utterance}"
            openface = self.openface_dir(split)
            clip = Clip(video=Path(self.videos[split]) / f"{stem}.mp4",
                        au_csv=openface / f"{stem}.csv" if openface else None)
        return Candidate(record, clip, origin)
