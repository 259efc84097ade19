"""FACS action units: their names, the AUs that express each emotion (AU tables), and the FER caption.

AU names follow the Facial Action Coding System (Ekman & Friesen, 1978). An AU table maps each of
the seven emotions to its AU list and names its literature source. Two are built in:

- `"emfacs"` (the default): the EMFACS prototypes (Friesen & Ekman, 1983) as commonly tabulated,
  happiness 6+12, sadness 1+4+15, surprise 1+2+5+26, fear 1+2+4+5+7+20+26, anger 4+5+7+23,
  disgust 9+15+16.
- `"merr"`: the presence lists of the MERR / Emotion-LLaMA pipeline (Cheng et al., NeurIPS 2024;
  `tools/emotion_analyzer.py` of MER-Dataset-Builder), which the paper says its FER step adapts.

Any other table is a JSON or YAML file `{"source": "...", "emotions": {"joy": [6, 12], ...}}`
(`load_au_table`). OpenFace 2.x estimates intensities for the AUs in `OPENFACE_AUS`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

AU_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    12: "lip corner puller", 14: "dimpler", 15: "lip corner depressor", 16: "lower lip depressor",
    17: "chin raiser", 20: "lip stretcher", 23: "lip tightener", 25: "lips part", 26: "jaw drop",
    28: "lip suck", 45: "blink",
}
OPENFACE_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
NEUTRAL_CAPTION = "No facial action units are active; the face is relaxed."


@dataclass(frozen=True)
class AUTable:
    """The AU list of each of the seven emotions, with the literature it comes from.

    Attributes:
        source: the citation the lists come from.
        emotions: emotion -> AU numbers; every one of `EMOTIONS` must be present (neutral: empty).
    """

    source: str
    emotions: Mapping[str, tuple[int, ...]]

    def check(self) -> AUTable:
        """Raise if an emotion of the seven is missing or an AU is unknown; returns the table."""
        from emoverse.data.record import EMOTIONS  # here, not at import: emoverse.data imports this module

        missing = sorted(set(EMOTIONS) - set(self.emotions))
        unknown = sorted(set(self.emotions) - set(EMOTIONS))
        if missing or unknown:
            raise ValueError(f"AU table ({self.source}): emotions missing {missing}, unknown {unknown}; "
                             f"expected exactly {list(EMOTIONS)}")
        for emotion, aus in self.emotions.items():
            bad = [au for au in aus if au not in AU_NAMES]
            if bad:
                raise ValueError(f"AU table ({self.source}): {emotion} lists AU(s) {bad}; known AUs {sorted(AU_NAMES)}")
        return self


AU_TABLES: dict[str, AUTable] = {
    "emfacs": AUTable(
        source="EMFACS prototypes (Friesen & Ekman, 1983)",
        emotions={"joy": (6, 12), "sadness": (1, 4, 15), "surprise": (1, 2, 5, 26), "fear": (1, 2, 4, 5, 7, 20, 26),
                  "anger": (4, 5, 7, 23), "disgust": (9, 15, 16), "neutral": ()},
    ),
    "merr": AUTable(
        source="MERR / Emotion-LLaMA (Cheng et al., NeurIPS 2024), MER-Dataset-Builder EMOTION_TO_AU_MAP",
        emotions={"joy": (6, 12, 14), "sadness": (1, 4, 14, 15), "surprise": (1, 2, 5, 26),
                  "fear": (1, 2, 4, 5, 7, 20, 26), "anger": (4, 5, 7, 10, 17, 23), "disgust": (9, 15), "neutral": ()},
    ),
}
EMOTION_AUS: dict[str, tuple[int, ...]] = dict(AU_TABLES["emfacs"].emotions)
"""The default (EMFACS) table as a plain dict."""


def load_au_table(name_or_path: str | Path) -> AUTable:
    """A built-in table by name (`AU_TABLES`) or a JSON/YAML file `{"source": ..., "emotions": {...}}`."""
    if str(name_or_path) in AU_TABLES:
        return AU_TABLES[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"AU table {str(name_or_path)!r}: neither a built-in table {sorted(AU_TABLES)} nor a file")
    data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("source"), str) or not isinstance(data.get("emotions"), dict):
        raise ValueError(f"{path}: expected a mapping with 'source' (text) and 'emotions' (emotion -> list of AU numbers)")
    try:
        emotions = {e: tuple(int(au) for au in aus or ()) for e, aus in data["emotions"].items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: emotions must map each emotion to a list of AU numbers ({err})") from err
    return AUTable(source=f"{data['source']} ({path})", emotions=emotions).check()


def au_caption(active_aus: Collection[int], emotion: str, table: AUTable | None = None) -> str:
    """Caption the peak frame: AU_common = active AUs ∩ the emotion's AU list, mapped to words (Eq. 3).

    Args:
        active_aus: AU numbers active in the peak frame.
        emotion: one of the seven emotions.
        table: the AU table (default: EMFACS).

    Returns:
        e.g. "Cheek raiser, lip corner puller." or `NEUTRAL_CAPTION` when nothing is in common.
    """
    emotions = (table or AU_TABLES["emfacs"]).emotions
    if emotion not in emotions:
        raise ValueError(f"emotion {emotion!r}; expected one of {sorted(emotions)}")
    common = sorted(set(active_aus) & set(emotions[emotion]))
    if not common:
        return NEUTRAL_CAPTION
    words = ", ".join(AU_NAMES[au] for au in common)
    return words[0].upper() + words[1:] + "."
