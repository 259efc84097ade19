"""Quality control over candidate records: duplicates and conflicts, with every drop counted.

Media checks (missing or unreadable video), FER checks (no face) and audio checks (`emoverse.data.audio`:
no stream, undecodable, too short, silent, clipped, cut) happen when a shard is built
(`emoverse.amt.build`); all report through `QCLog`, which the manifest sums.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from emoverse.amt.sources.base import DROP_REASONS, LABEL_REMOVALS, Candidate, Rejected
from emoverse.data.audio import AUDIO_FAULTS


@dataclass
class QCLog:
    """Drops (whole records), label removals and audio faults, each with the record id, where it came from and why."""

    drops: list[dict[str, str]] = field(default_factory=list)
    removals: list[dict[str, str]] = field(default_factory=list)
    audio_faults: list[dict[str, str]] = field(default_factory=list)

    def drop(self, rid: str, source: str, split: str, reason: str, origin: str, detail: str = "") -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"drop reason {reason!r}; expected one of {sorted(DROP_REASONS)}")
        self.drops.append({"id": rid, "source": source, "split": split, "reason": reason, "origin": origin,
                           "detail": detail})

    def remove(self, rid: str, source: str, split: str, reason: str, origin: str, detail: str = "") -> None:
        if reason not in LABEL_REMOVALS:
            raise ValueError(f"label removal reason {reason!r}; expected one of {sorted(LABEL_REMOVALS)}")
        self.removals.append({"id": rid, "source": source, "split": split, "reason": reason, "origin": origin,
                              "detail": detail})

    def audio(self, rid: str, source: str, split: str, reason: str, origin: str, detail: str = "") -> None:
        """An audio fault of a kept record (`emoverse.data.audio.AUDIO_FAULTS`)."""
        if reason not in AUDIO_FAULTS:
            raise ValueError(f"audio fault {reason!r}; expected one of {sorted(AUDIO_FAULTS)}")
        self.audio_faults.append({"id": rid, "source": source, "split": split, "reason": reason, "origin": origin,
                                  "detail": detail})

    def rejected(self, item: Rejected) -> None:
        self.drop(item.id, item.source, item.split, item.reason, item.origin, item.detail)

    def extend(self, other: QCLog) -> None:
        self.drops += other.drops
        self.removals += other.removals
        self.audio_faults += other.audio_faults

    def counts(self) -> dict[str, Any]:
        return {"dropped": dict(sorted(Counter(d["reason"] for d in self.drops).items())),
                "labels_removed": dict(sorted(Counter(d["reason"] for d in self.removals).items()))}

    def audio_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(d["reason"] for d in self.audio_faults).items()))

    def to_jsonl(self) -> str:
        lines = [json.dumps({"kind": "drop", **d}, ensure_ascii=False) for d in self.drops]
        lines += [json.dumps({"kind": "label_removed", **d}, ensure_ascii=False) for d in self.removals]
        lines += [json.dumps({"kind": "audio", **d}, ensure_ascii=False) for d in self.audio_faults]
        return "\n".join(lines) + ("\n" if lines else "")

    def to_dict(self) -> dict[str, Any]:
        return {"drops": self.drops, "removals": self.removals, "audio": self.audio_faults}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QCLog:
        return cls(drops=list(data["drops"]), removals=list(data["removals"]), audio_faults=list(data.get("audio", [])))


def deduplicate(candidates: Iterable[Candidate], log: QCLog) -> list[Candidate]:
    """Keep one copy of each id: identical repeats are dropped (`duplicate_id`); copies whose labels or
    split differ are all dropped (`conflicting_labels`). Order of first appearance is kept."""
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.record.id, []).append(c)
    kept = []
    for rid, copies in groups.items():
        first = copies[0].record
        key = (first.split, first.labels, first.text)
        if all((c.record.split, c.record.labels, c.record.text) == key for c in copies):
            kept.append(copies[0])
            for c in copies[1:]:
                log.drop(rid, c.record.source, c.record.split, "duplicate_id", c.origin, f"repeats {copies[0].origin}")
            continue
        for c in copies:
            log.drop(rid, c.record.source, c.record.split, "conflicting_labels", c.origin,
                     f"{len(copies)} copies with different labels, splits or text")
    return kept
