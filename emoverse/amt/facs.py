"""FACS action units: their names, the AUs that express each emotion, and the FER caption.

AU names follow the Facial Action Coding System (Ekman & Friesen, 1978). The per-emotion AU
lists are the EMFACS prototypes (Friesen & Ekman, 1983) as commonly tabulated, e.g. happiness
6+12, sadness 1+4+15, surprise 1+2+5+26, fear 1+2+4+5+7+20+26, anger 4+5+7+23, disgust 9+15+16.
OpenFace 2.x estimates intensities for the AUs in `OPENFACE_AUS`.
"""

from __future__ import annotations

from collections.abc import Collection

AU_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    12: "lip corner puller", 14: "dimpler", 15: "lip corner depressor", 16: "lower lip depressor",
    17: "chin raiser", 20: "lip stretcher", 23: "lip tightener", 25: "lips part", 26: "jaw drop",
    45: "blink",
}
OPENFACE_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)

EMOTION_AUS: dict[str, tuple[int, ...]] = {
    "joy": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "anger": (4, 5, 7, 23),
    "disgust": (9, 15, 16),
    "neutral": (),
}
NEUTRAL_CAPTION = "No facial action units are active; the face is relaxed."


def au_caption(active_aus: Collection[int], emotion: str) -> str:
    """Caption the peak frame: AU_common = active AUs ∩ the emotion's AU list, mapped to words.

    Args:
        active_aus: AU numbers active in the peak frame.
        emotion: one of `EMOTION_AUS`.

    Returns:
        e.g. "Cheek raiser, lip corner puller." or `NEUTRAL_CAPTION` when nothing is in common.
    """
    if emotion not in EMOTION_AUS:
        raise ValueError(f"emotion {emotion!r}; expected one of {sorted(EMOTION_AUS)}")
    common = sorted(set(active_aus) & set(EMOTION_AUS[emotion]))
    if not common:
        return NEUTRAL_CAPTION
    words = ", ".join(AU_NAMES[au] for au in common)
    return words[0].upper() + words[1:] + "."
