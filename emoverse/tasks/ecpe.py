"""ECPE: which earlier utterances (or the utterance itself) caused the target utterance's emotion."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from emoverse.data.record import AMTRecord
from emoverse.metrics import ECPEPairF1
from emoverse.metrics._utils import check_same_length
from emoverse.metrics.ecpe import COMPAT_MODES, SCORED_EMOTIONS, Compat
from emoverse.tasks.base import Task, check_reward_weights, check_template
from emoverse.tasks.parsing import (
    EMOTION_SYNONYMS,
    cause_indices,
    find_pairs,
    says_no_cause,
)
from emoverse.tasks.registry import register_task

ECPE_TEMPLATE = (
    "Below is a conversation containing multiple utterances from different speakers, \n"
    "along with the corresponding emotion label for each utterance. \n"
    "Your task is to identify the indices of the candidate utterances that elicited the emotion in the target "
    "utterance.\n"
    "Input conversation:{conversation}\n"
    "Candidate utterances:{candidates}\n"
    "Target utterance:{target}\n"
    'You need to return the answer as, for example, "3_surprise,1", \n'
    "which means that the emotion of surprise in the third sentence is related to the first sentence, \n"
    "and if the emotion is related to more than one sentence, separate the sentences with “;”.\n"
    "The emotion-cause indices of the target utterance are:"
)
"""The released EmoVerse ECF 2.0 prompt (`data/ecf2_caption_test.json`)."""

ECPE_E2E_TEMPLATE = (
    "Below is a conversation containing multiple utterances from different speakers.\n"
    "Your task is to name the emotion of the target utterance (anger, disgust, fear, joy, sadness, surprise or "
    "neutral) and the indices of the candidate utterances that caused it.\n"
    "Input conversation:{conversation}\n"
    "Candidate utterances:{candidates}\n"
    "Target utterance:{target}\n"
    'You need to return the answer as, for example, "3_surprise,1", \n'
    "which means that the emotion of surprise in the third sentence is related to the first sentence, \n"
    "and if the emotion is related to more than one sentence, separate the sentences with “;”. "
    "If the target utterance is neutral or has no cause, answer None.\n"
    "The emotion-cause indices of the target utterance are:"
)
"""End-to-end ECPE (`ECPE(show_emotions=False)`): the turns are shown without their emotion labels, so the model
names the emotion as well as the cause, as SemEval-2024 Task 3 Subtask 2 scores pair extraction. The released
EmoVerse prompt shows every turn's gold emotion (a variant beyond the paper's prompts)."""

Triple = tuple[int, int, str]
"""(emotion_turn, cause_turn, emotion), turns 1-based."""

_ECHOED_TURN = re.compile(r"(?m)^\W*\d+(?:_[A-Za-z]+)?\.\s+[^\n:]{1,60}:")
"""A conversation line as the prompt writes it (`3_joy. Ross:` or `3. Ross:`), at the start of a line: an answer that
repeats the prompt's turns is not a list of cause indices (SmolLM2-135M-Instruct zero-shot echoes them, and their
turn numbers read as causes paired with the target's gold emotion scored F1 0.22 on ECF dev)."""


@dataclass  # not frozen: Lightning's predict loop rebuilds dataclasses field by field (move_data_to_device)
class ECPEAnswer:
    """A parsed ECPE answer.

    Attributes:
        pairs: de-duplicated `(emotion_turn, cause_turn, emotion)` in order of appearance;
            empty for an explicit "no cause" answer.
        ignored: pairs dropped because their emotion turn is not the target turn, the cause
            index is outside 1..target turn or the emotion word is not an emotion.
    """

    pairs: tuple[Triple, ...] = ()
    ignored: int = 0


class ECPEAnswerF1(ECPEPairF1):
    """`ECPEPairF1` plus the parser's counts: `unparsed` answers and `ignored_pairs`."""

    def __init__(self, compat: Compat = "semeval", **kwargs: Any) -> None:
        super().__init__(compat=compat, **kwargs)
        self.add_state("unparsed", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("ignored_pairs", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Any], target: Sequence[Any], unparsed: int = 0, ignored_pairs: int = 0) -> None:
        """`ECPEPairF1.update`, plus how many answers were unparsable and pairs were ignored."""
        super().update(preds, target)
        self.unparsed += unparsed
        self.ignored_pairs += ignored_pairs

    def compute(self) -> dict[str, Tensor]:
        return {**super().compute(), "unparsed": self.unparsed.float(), "ignored_pairs": self.ignored_pairs.float()}


def last_turn(record: AMTRecord) -> int:
    """The last turn the prompt shows: the target's, or a later one when the context is the whole conversation."""
    return max([record.turn or 0, *(u.turn for u in record.context)])


@register_task
class ECPE(Task):
    """Emotion-cause pair extraction for one target utterance of a conversation (ECF 2.0).

    The query lists the record's conversation (its context and the target, in turn order; the
    whole conversation for AMT built from ECF, or the turns up to the target) as
    `{turn}_{emotion}. {speaker}: {text}` lines, the candidate causes and the target; the answer
    is `5_surprise,2;5_surprise,5`, or the empty string when the target has no cause. Gold causes
    after the last turn shown are left out of the answer but stay in `target()` (they cost
    recall, as in SemEval). "Target turn" in the parsing rules below means the last turn shown.

    Parsing (`parse`, through `tasks.parsing`; negated mentions, "not 5_joy,2" or "not utterance 3",
    are left out everywhere):
    - every `<turn>_<emotion>,<cause>` found anywhere is a pair (emotion synonyms allowed);
        if not indices or turn is None or emotion is None:
    - pairs about another utterance than the target (emotion turn != target turn), causes
      outside 1..target turn and unknown emotion words are dropped and counted
      (`ECPEAnswer.ignored`); pairs are de-duplicated; pairs giving one utterance more than one
      emotion are a hedge (`None`); anything else is `None`.

    Reward terms: `correct`, the pair F1 of the answer's pairs against the utterance's gold pairs
    (pairs as `ECPEPairF1` counts them: (emotion turn, cause turn, emotion), neutral ones left out);
    1 when both are empty (a right "no cause" answer).

    End to end (`show_emotions=False`): the lines are `{turn}. {speaker}: {text}`, the emotion unseen; the
    trained answer is the same pairs, or "None" for a target without cause; a bare cause index (no emotion
    named) is unparsed, since the target's emotion is the model's to name, and the pairs' emotion is scored.

    Args:
        template: the query, with `{conversation}`, `{candidates}` and `{target}`; default the paper's prompt, or
            `ECPE_E2E_TEMPLATE` with `show_emotions=False`.
        include_target_in_candidates: list every turn shown (1..target, or the whole conversation)
            as candidates, and parse causes up to the last turn shown (self-causes are common
            in ECF); `False` lists 1..target-1 like the released EmoVerse data.
        compat: how `ECPEPairF1` treats utterances without gold cause (see there).
        reward_weights: weights of the reward terms `format` and `correct` (default 0.1, 1.0).
        show_emotions: show every turn's gold emotion (the released EmoVerse prompt, default); False: end-to-end
            pair extraction, the model names the emotion and its causes.
    """

    name = "ecpe"
    max_new_tokens = 48

    def __init__(
        self,
        template: str | None = None,
        include_target_in_candidates: bool = True,
        compat: Compat = "semeval",
        reward_weights: dict[str, float] | None = None,
        show_emotions: bool = True,
    ) -> None:
        fields = frozenset({"conversation", "candidates", "target"})
        if not isinstance(show_emotions, bool):
            raise ValueError(f"ECPE.show_emotions={show_emotions!r}; expected true (the paper's prompt) or false")
        self.show_emotions = show_emotions
        if template is None:
            template = ECPE_TEMPLATE if show_emotions else ECPE_E2E_TEMPLATE
        self.template = check_template(template, "ECPE.template", fields, fields)
        self.include_target_in_candidates = include_target_in_candidates
        if compat not in COMPAT_MODES:
            raise ValueError(f"ECPE.compat={compat!r}: expected one of {COMPAT_MODES}")
        self.compat = compat
        self.reward_weights = check_reward_weights(reward_weights, "ECPE", self.default_reward_weights)

    def has_label(self, record: AMTRecord) -> bool:
        return (
            record.labels.cause_pairs is not None
            and record.labels.emotion is not None
            and record.turn is not None
            and record.dialogue_id is not None
            and all(u.emotion is not None for u in record.context)
        )

    def query(self, record: AMTRecord, rng: random.Random) -> str:
        if record.turn is None or record.labels.emotion is None:
            raise ValueError(f"record {record.id!r}: ECPE needs `turn` and the target's `labels.emotion`")
        turns = [(u.turn, u.emotion, u.speaker, u.text) for u in record.context]
        turns.append((record.turn, record.labels.emotion, record.speaker or "Speaker", record.text))
        shown = "{turn}_{emotion}. {speaker}: {text}" if self.show_emotions else "{turn}. {speaker}: {text}"
        lines = {turn: shown.format(turn=turn, emotion=emotion, speaker=speaker, text=text)
                 for turn, emotion, speaker, text in sorted(turns)}
        last = last_turn(record) if self.include_target_in_candidates else record.turn - 1
        return self.template.format(
            conversation="\n".join(lines.values()),
            candidates="\n".join(line for turn, line in lines.items() if turn <= last),
            target=lines[record.turn],
        )

    def response(self, record: AMTRecord) -> str:
        # A cause in a turn the prompt does not show (after the last turn shown: 3.5% of ECF 2.0 test
        # pairs are after the target, so with a context of earlier turns only; or dropped from a dialogue
        # too long for the context) is left out of the answer, the gold of `target()` keeps it (SemEval
        # scores it as missed).
        visible = {record.turn, *(u.turn for u in record.context)}
        shown = sorted(p for p in record.labels.cause_pairs if p[1] in visible)
        answer = ";".join(f"{e}_{emotion},{c}" for e, c, emotion in shown)
        return answer or ("" if self.show_emotions else "None")

    def parse(self, text: str, record: AMTRecord | None = None) -> ECPEAnswer | None:
        if record is None:
            return self._parse(text, None, None)
        # end to end, a bare index has no emotion the model named: the gold one must not fill it in
        emotion = record.labels.emotion if self.show_emotions else None
        return self._parse(text, record.turn, emotion, last_turn(record))

    def parse_offline(self, text: str, target: Mapping[str, Any]) -> ECPEAnswer | None:
        emotion = target.get("emotion") if self.show_emotions else None
        return self._parse(text, target.get("turn"), emotion, target.get("last_turn"))

    def target(self, record: AMTRecord) -> dict[str, Any]:
        """`{"dialogue_id", "turn", "last_turn", "emotion", "pairs": [[emotion_turn, cause_turn, emotion], ...]}`."""
        self.check_label(record)
        pairs = [[e, c, emotion] for e, c, emotion in record.labels.cause_pairs]
        return {"dialogue_id": record.dialogue_id, "turn": record.turn, "last_turn": last_turn(record),
                "emotion": record.labels.emotion, "pairs": pairs}

    def reward_terms(self, prediction: ECPEAnswer, target: Mapping[str, Any]) -> dict[str, float]:
        scored = set(SCORED_EMOTIONS)
        pred = {(e, c, emo) for e, c, emo in prediction.pairs if emo in scored}
        gold = {(int(e), int(c), emo) for e, c, emo in target["pairs"] if emo in scored}
        if not pred and not gold:
            return {"correct": 1.0}
        hits = len(pred & gold)
        return {"correct": 2 * hits / (len(pred) + len(gold))}

    def new_metric(self) -> Metric:
        return ECPEAnswerF1(compat=self.compat)

    def update_metric(
        self, metric: Metric, predictions: Sequence[ECPEAnswer | None], targets: Sequence[Mapping[str, Any]]
    ) -> None:
        check_same_length(predictions, targets)
        pred_pairs, gold_pairs, unparsed, ignored = [], [], 0, 0
        for i, (pred, gold) in enumerate(zip(predictions, targets)):
            missing = {"dialogue_id", "pairs"} - set(gold)
            if missing:
                raise ValueError(f"ECPE target #{i} lacks {sorted(missing)}; expected the dict from ECPE.target()")
            conversation = gold["dialogue_id"]
            gold_pairs += [(conversation, int(e), int(c), emotion) for e, c, emotion in gold["pairs"]]
            if pred is None:
                unparsed += 1
                continue
            pred_pairs += [(conversation, e, c, emotion) for e, c, emotion in pred.pairs]
            ignored += pred.ignored
        metric.update(pred_pairs, gold_pairs, unparsed=unparsed, ignored_pairs=ignored)

    @staticmethod
    def _parse(text: str, turn: int | None, emotion: str | None, last: int | None = None) -> ECPEAnswer | None:
        if _ECHOED_TURN.search(text):
            return None  # the conversation's lines repeated: neither their numbers nor their words are an answer
        found = find_pairs(text)
        indices = [] if found else cause_indices(text)
        if says_no_cause(text):
            # "none" beside a cause is two answers at once: no reading of it is the answer
            return None if found or indices else ECPEAnswer()
        if found:
            triples, ignored = [], 0
            for emotion_turn, word, cause in found:
                limit = last if last is not None else turn if turn is not None else emotion_turn
                label = EMOTION_SYNONYMS.get(word)
                # a pair about another turn is not an answer to this question, even if it is a gold pair there
                if label is None or not 1 <= cause <= limit or (turn is not None and emotion_turn != turn):
                    ignored += 1
                else:
                    triples.append((emotion_turn, cause, label))
            emotions: dict[int, set[str]] = {}
            for emotion_turn, _, label in triples:
                emotions.setdefault(emotion_turn, set()).add(label)
            if any(len(labels) > 1 for labels in emotions.values()):
                return None  # one utterance has one emotion: several are a hedge over the closed set
            return ECPEAnswer(tuple(dict.fromkeys(triples)), ignored)
        if not indices or turn is None or emotion is None:
            return None
        kept = [c for c in indices if 1 <= c <= (last if last is not None else turn)]
        return ECPEAnswer(tuple(dict.fromkeys((turn, c, emotion) for c in kept)), len(indices) - len(kept))
