"""Reading labels back from free-form generations: emotions, sentiment, ECPE pairs.

All parsers are total: they return `None` (or count what they ignore) instead of raising, and
never fall back to a default class. Matching is on lowercase word tokens, so case and
punctuation do not matter; the first label named in the text wins. Negation is not handled
("not happy" reads as joy): the models are trained to answer with the bare label.
"""

from __future__ import annotations

import re

from emoverse.data.record import EMOTIONS

EMOTION_SYNONYMS: dict[str, str] = {
    **{e: e for e in EMOTIONS},
    "angry": "anger", "mad": "anger", "furious": "anger", "annoyed": "anger", "irritated": "anger",
    "rage": "anger", "frustrated": "anger", "frustration": "anger",
    "disgusted": "disgust", "disgusting": "disgust", "revulsion": "disgust",
    "fearful": "fear", "scared": "fear", "afraid": "fear", "frightened": "fear", "terrified": "fear",
    "anxious": "fear", "nervous": "fear", "worried": "fear",
    "happy": "joy", "happiness": "joy", "joyful": "joy", "glad": "joy", "delighted": "joy",
    "excited": "joy", "excitement": "joy", "amused": "joy",
    "calm": "neutral", "neutrality": "neutral",
    "sad": "sadness", "unhappy": "sadness", "sorrow": "sadness", "sorrowful": "sadness",
    "depressed": "sadness", "grief": "sadness",
    "surprised": "surprise", "surprising": "surprise", "shocked": "surprise", "shock": "surprise",
    "astonished": "surprise", "amazed": "surprise",
}
"""Lowercase word → one of `EMOTIONS`. Ambiguous words ("upset") are deliberately absent."""

SENTIMENT_WORDS: dict[str, float] = {
    "positive": 1.0, "positively": 1.0, "pos": 1.0,
    "negative": -1.0, "negatively": -1.0, "neg": -1.0,
    "neutral": 0.0,
}
"""Lowercase word → sentiment score. "neutral" reads as 0.0: non-negative under N/N, and
negative under N/P (MMSA counts a prediction of exactly 0 as negative there)."""

_WORD = re.compile(r"[a-z]+")
_NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:\.\d+)?")
_PAIR = re.compile(r"(\d+)\s*_\s*([a-z]+)\s*[,:]\s*(\d+)")
_INDEX = re.compile(r"\d+")
_NO_CAUSE = frozenset({"none", "no", "nothing", "null", "empty"})


def words(text: str) -> list[str]:
    """Lowercase alphabetic tokens of `text` (punctuation and digits split words)."""
    return _WORD.findall(text.lower())


def parse_emotion(text: str) -> str | None:
    """First emotion named in `text` (synonyms allowed), as one of `EMOTIONS`; else `None`."""
    for word in words(text):
        if word in EMOTION_SYNONYMS:
            return EMOTION_SYNONYMS[word]
    return None


def parse_sentiment(text: str, low: float = -3.0, high: float = 3.0) -> float | None:
    """A sentiment score from `text`.

    A sentiment word (`SENTIMENT_WORDS`, first one wins) takes precedence; otherwise the first
    number is read as a score and kept only when it lies in [`low`, `high`].

    Returns:
        The score, or `None` when there is no sentiment word and no number in range.
    """
    for word in words(text):
        if word in SENTIMENT_WORDS:
            return SENTIMENT_WORDS[word]
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group().replace("−", "-"))
    return value if low <= value <= high else None


def says_no_cause(text: str) -> bool:
    """Whether `text` is an explicit empty ECPE answer.

    True for a text without digits that has no words at all ("", '""', ".") or contains one of
    none/no/nothing/null/empty ("None.", "There is no cause").
    """
    if _INDEX.search(text):
        return False
    tokens = words(text)
    return not tokens or any(w in _NO_CAUSE for w in tokens)


def find_pairs(text: str) -> list[tuple[int, str, int]]:
    """All `<emotion_turn>_<emotion>,<cause_turn>` triples in `text`, emotion as written (lowercase).

    Returns:
        `(emotion_turn, emotion_word, cause_turn)` in order of appearance, duplicates kept.
    """
    return [(int(e), word, int(c)) for e, word, c in _PAIR.findall(text.lower())]


def find_indices(text: str) -> list[int]:
    """Every integer in `text`, in order (bare cause indices written inside prose)."""
    return [int(m) for m in _INDEX.findall(text)]
