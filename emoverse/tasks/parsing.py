"""Reading labels back from free-form generations: emotions, sentiment, ECPE pairs.

Evaluation (`Task.parse` → metrics) and reinforcement (`Task.reward`) read answers through these
functions alone, so the rules below are both what is reported and what a policy is optimised
against. They are written so that no answer scores better by hedging:

- an answer that names more than one label of a closed set is no answer (`None`, counted as
  unparsed): "Joy, anger or sadness." would otherwise be right whatever the gold;
- a negated mention is no mention: a negator ("not", "no", "never", "neither", "nor", "cannot",
  "without", any "...n't") removes every label after it up to the end of its clause (a
  punctuation mark or a contrast word such as "but"), so "It is not joy, it is anger." is anger
  and "I'm not happy at all." names nothing;
- digits count only where the answer's form says they are an answer (see `cause_indices`).

All parsers are total: they return `None` instead of raising and never fall back to a default
class. Case and punctuation do not matter. The trained answers ("Joy.", "Negative.",
"5_surprise,2;5_surprise,5", "") parse exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

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

NEGATORS = frozenset({"not", "no", "never", "neither", "nor", "cannot", "without"})
"""Words that negate the labels after them in their clause (as does any word ending in "n't")."""

CLAUSE_WORDS = frozenset({"but", "rather", "instead", "just", "though", "although", "however", "yet", "whereas"})
"""Contrast words that end a negation's scope, like punctuation: "not sad but angry" is anger."""

NO_CAUSE_WORDS = frozenset({"none", "nothing", "null", "empty", "no"})
"""Words that say an ECPE target has no cause ("no" unless followed by `_NOT_EXHAUSTIVE`)."""

_NOT_EXHAUSTIVE = frozenset({"other", "others", "more", "further", "additional"})
"""After "no", these make "5_joy,2; no other cause" a closing remark, not a "no cause" answer."""

CAUSE_CUES = frozenset({
    "utterance", "utterances", "turn", "turns", "sentence", "sentences", "cause", "causes",
    "index", "indices", "number", "numbers",
})
"""Words after which integers are ECPE cause indices ("utterances 2 and 4", "the cause is 3")."""

_COPULAS = frozenset({"is", "are", "was", "were"})
_LIST_SEPARATORS = frozenset({",", ";", "/", "&", "and"})

_TOKEN = re.compile(
    r"(?P<pair>\d+\s*_\s*[a-z]+\s*[,:]\s*\d+)"  # an ECPE pair, 5_surprise,2
    r"|(?P<number>(?<![\w.])[-+−]?\d+(?:\.\d+)?(?![\w]|\.\d))"  # a number not glued to letters
    r"|(?P<word>[a-z]+(?:['’][a-z]+)*)"  # a word, contractions whole ("isn't")
    r"|(?P<stop>[.;:,!?()\[\]{}\n/&]|--|—|–)"  # clause punctuation and list separators
)
_PAIR = re.compile(r"(\d+)\s*_\s*([a-z]+)\s*[,:]\s*(\d+)")
_INTEGER = re.compile(r"\d+")
_SCOPE_STOPS = frozenset(".;:,!?()[]{}\n") | {"--", "—", "–"}

Kind = Literal["pair", "number", "word", "stop"]
T = TypeVar("T")


@dataclass(frozen=True)
class Token:
    """One piece of an answer.

    Attributes:
        kind: "pair" (`5_surprise,2`), "number" (integer or decimal, with its sign), "word" or
            "stop" (punctuation).
        text: the lowercase text of the piece.
        negated: whether a negator earlier in its clause removes it.
    """

    kind: Kind
    text: str
    negated: bool = False

    @property
    def is_integer(self) -> bool:
        """An unsigned whole number (what a cause index is)."""
        return self.kind == "number" and _INTEGER.fullmatch(self.text) is not None


def is_negator(word: str) -> bool:
    """Whether `word` negates what follows it in its clause (`NEGATORS`, or a "...n't" contraction)."""
    return word in NEGATORS or word.endswith(("n't", "n’t"))


def tokens(text: str) -> list[Token]:
    """`text` as `Token`s, each marked `negated` when a negator precedes it in the same clause.

    A clause ends at punctuation (`.;:,!?`, brackets, dashes, a newline) or at a contrast word
    (`CLAUSE_WORDS`); the negator itself is not negated.
    """
    out: list[Token] = []
    negating = False
    for match in _TOKEN.finditer(text.lower()):
        kind: Kind = match.lastgroup  # type: ignore[assignment]
        piece = match.group()
        if kind == "stop" and piece in _SCOPE_STOPS or kind == "word" and piece in CLAUSE_WORDS:
            negating = False
        out.append(Token(kind, piece, negated=negating and kind != "stop"))
        if kind == "word" and is_negator(piece):
            negating = True
    return out


def words(text: str) -> list[str]:
    """Lowercase word tokens of `text` (punctuation and digits split words; contractions stay whole)."""
    return [t.text for t in tokens(text) if t.kind == "word"]


def asserted_labels(text: str, vocabulary: Mapping[str, T]) -> tuple[list[T], list[T]]:
    """The labels `text` names through `vocabulary` (word → label), split by negation.

    Returns:
        `(asserted, negated)`: distinct labels in order of first mention; a label both asserted
        and negated appears in both.
    """
    asserted: dict[T, None] = {}
    negated: dict[T, None] = {}
    for token in tokens(text):
        if token.kind == "word" and token.text in vocabulary:
            (negated if token.negated else asserted)[vocabulary[token.text]] = None
    return list(asserted), list(negated)


def one_label(text: str, vocabulary: Mapping[str, T]) -> T | None:
    """The single label `text` asserts, or `None` when it asserts none or more than one (a hedge)."""
    asserted, _ = asserted_labels(text, vocabulary)
    return asserted[0] if len(asserted) == 1 else None


def parse_emotion(text: str) -> str | None:
    """The one emotion `text` asserts (synonyms allowed), as one of `EMOTIONS`; else `None`.

    "Joy." → joy; "It is not joy, it is anger." → anger; "Joy, anger or sadness." → None (names
    three); "I'm not happy at all." → None (names none).
    """
    return one_label(text, EMOTION_SYNONYMS)


def parse_sentiment(text: str, low: float = -3.0, high: float = 3.0) -> float | None:
    """A sentiment score from `text`.

    When `text` mentions a sentiment word (`SENTIMENT_WORDS`), the answer is the one sentiment it
    asserts ("Positive? Negative." and "Not positive." are `None`). Otherwise it is its one
    non-negated number, kept only when it lies in [`low`, `high`] ("-1.5" → -1.5; "7" and
    "2 or 3" → `None`).

    Returns:
        The score, or `None` when `text` gives no single sentiment.
    """
    asserted, negated = asserted_labels(text, SENTIMENT_WORDS)
    if asserted or negated:
        return asserted[0] if len(asserted) == 1 else None
    numbers = {float(t.text.replace("−", "-")) for t in tokens(text) if t.kind == "number" and not t.negated}
    if len(numbers) != 1:
        return None
    value = numbers.pop()
    return value if low <= value <= high else None


def says_no_cause(text: str) -> bool:
    """Whether `text` states that an ECPE target has no cause.

    True when it has no words and no numbers at all ("", '""', ".": the trained empty answer) or
    uses one of `NO_CAUSE_WORDS` ("None.", "There is no cause"; "no other"/"no more" do not
    count). Whether it also names a cause is `ECPE.parse`'s business.
    """
    toks = tokens(text)
    if not any(t.kind != "stop" for t in toks):
        return True
    for i, t in enumerate(toks):
        if t.kind == "word" and t.text in NO_CAUSE_WORDS:
            after = toks[i + 1].text if i + 1 < len(toks) else ""
            if t.text != "no" or after not in _NOT_EXHAUSTIVE:
                return True
    return False


def find_pairs(text: str) -> list[tuple[int, str, int]]:
    """The `<emotion_turn>_<emotion>,<cause_turn>` triples `text` asserts, emotion as written (lowercase).

    Returns:
        `(emotion_turn, emotion_word, cause_turn)` in order of appearance, duplicates kept; pairs
        after a negator in their clause ("not 5_joy,2") are left out.
    """
    found = []
    for token in tokens(text):
        if token.kind == "pair" and not token.negated:
            e, word, c = _PAIR.fullmatch(token.text).groups()  # type: ignore[union-attr]
            found.append((int(e), word, int(c)))
    return found


def cause_indices(text: str) -> list[int]:
    """The integers `text` gives as ECPE cause indices, in order.

    An index list is one or more integers joined by `,` `;` `/` `&` or "and", either making up the
    whole answer ("2", "2; 4", "2 and 4.") or following a cue word (`CAUSE_CUES`, optionally then
    is/are/was/were and a colon: "utterances 2 and 4", "The cause is 3"). A list whose cue is
    negated ("not utterance 3") and every other integer ("also 2", "one of 5 turns"), decimal
    ("1.3") or signed number is stray text, not an answer.
    """
    toks = tokens(text)
    content = [t for t in toks if not (t.kind == "stop" and t.text == ".")]
    if content and content[0].is_integer and all(t.is_integer or t.text in _LIST_SEPARATORS for t in content):
        return [int(t.text) for t in content if t.is_integer]
    found: list[int] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        i += 1
        if t.kind != "word" or t.text not in CAUSE_CUES or t.negated:
            continue
        while i < len(toks) and toks[i].text in _COPULAS:
            i += 1
        if i < len(toks) and toks[i].text == ":":
            i += 1
        if i < len(toks) and toks[i].is_integer and not toks[i].negated:
            indices, i = _read_list(toks, i)
            found += indices
    return found


def _read_list(toks: list[Token], i: int) -> tuple[list[int], int]:
    """The integers of the list starting at `toks[i]` (an integer) and the position after it."""
    out = [int(toks[i].text)]
    i += 1
    while i + 1 < len(toks) and toks[i].text in _LIST_SEPARATORS and toks[i + 1].is_integer and not toks[i + 1].negated:
        out.append(int(toks[i + 1].text))
        i += 2
    return out, i
