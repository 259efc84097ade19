"""Answer parsing that cannot be gamed (issue 24): hedged answers (more than one label of a closed set)
and negated mentions are no answer, stray digits are not ECPE causes, and "none" beside a cause is one
documented rule. The same table is in docs/tasks.md; evaluation and GRPO rewards read it alike."""

from __future__ import annotations

import pytest

from emoverse.data.record import AMTLabels, AMTRecord, Utterance
from emoverse.tasks import ECPE, MER, MSA, ECPEAnswer
from emoverse.tasks.parsing import cause_indices, says_no_cause, tokens

CONTEXT = [
    Utterance(1, "Chandler", "Please do not do that again .", "disgust"),
    Utterance(2, "Paul", "Uh , it is Paul .", "neutral"),
    Utterance(3, "Monica", "Buzz him in .", "neutral"),
    Utterance(4, "Joey", "Who is Paul ?", "neutral"),
]


def record(emotion: str = "joy", sentiment: float = 1.0, pairs: list[tuple[int, int, str]] | None = None,
           turn: int = 5) -> AMTRecord:
    return AMTRecord(
        id=f"ecf_1375_{turn}", source="ecf", split="test", text="Paul , the wine guy , Paul ?", speaker="Ross",
        dialogue_id="1375", turn=turn, context=CONTEXT[: turn - 1],
        labels=AMTLabels(sentiment=sentiment, emotion=emotion,
                         cause_pairs=[(turn, 3, emotion)] if pairs is None else pairs),
    )


MER_CASES = [
    # the trained answers and plain ones parse as before
    ("Joy.", "joy"), ("Neutral.", "neutral"), ("The emotion is: Anger.", "anger"), ("I am shocked", "surprise"),
    ("Joy. The person is happy.", "joy"),  # two words, one label
    # hedges: more than one label asserted
    ("Joy, anger or sadness.", None), ("Neutral, maybe joy", None), ("happy or sad", None),
    ("anger, sadness, surprise, disgust, joy, neutral or fear", None),  # the prompt's list echoed
    # negation removes the labels after it in its clause
    ("It is not joy, it is anger.", "anger"), ("I'm not happy at all.", None), ("Not joy.", None),
    ("Neither sad nor angry, just neutral.", "neutral"), ("The person isn't angry; she is sad.", "sadness"),
    ("The person isn’t angry", None), ("I don't think she is happy or sad, she is scared.", "fear"),
    ("no joy here, only sadness", "sadness"), ("not sad but angry", "anger"), ("No, it is joy.", "joy"),
    ("not joy, not anger", None),
]

MSA_CASES = [
    ("Positive.", 1.0), ("Negative.", -1.0), ("Neutral.", 0.0), ("-1.5", -1.5), ("score: 2.4", 2.4),
    ("Positive (score -2)", 1.0),  # a sentiment word wins; the number is not read
    ("Positive? Negative.", None), ("positive and negative", None), ("Not positive.", None),
    ("It is not negative, it is positive.", 1.0), ("neither positive nor negative", None),
    ("-1 or 2", None),  # two scores: a hedge
    ("7", None), ("I cannot tell.", None),
]

ECPE_CASES = [
    # the trained answers
    ("5_joy,2;5_joy,5", ((5, 2, "joy"), (5, 5, "joy")), 0), ("", (), 0), ("None.", (), 0),
    # bare cause indices: a list, or after a cue word
    ("2", ((5, 2, "joy"),), 0), ("2; 4.", ((5, 2, "joy"), (5, 4, "joy")), 0),
    ("The cause is 3", ((5, 3, "joy"),), 0), ("Utterances 2 and 4 caused it; also 2.", ((5, 2, "joy"), (5, 4, "joy")), 0),
    ("not utterance 3, utterance 4", ((5, 4, "joy"),), 0),
    # stray digits are no answer
    ("The emotion-cause indices of the target utterance are: 1.3 2.3 3.3 4.3", None, 0),
    ("I think 3 people talk here.", None, 0), ("the cause is not 3", None, 0),
    # "none" beside a cause says two things: unparsed; with only stray or negated digits it is "no cause"
    ("No, the cause is not 3; none.", (), 0), ("None of the 4 utterances.", (), 0),
    ("5_joy,3 or none", None, 0), ("none; utterance 3", None, 0),
    ("5_joy,3; no other cause", ((5, 3, "joy"),), 0),  # "no other" closes the answer, it is not "no cause"
    # one utterance, one emotion: pairs naming two emotions for the target are a hedge
    ("5_joy,3;5_anger,3", None, 0), ("not 5_anger,3; 5_joy,3", ((5, 3, "joy"),), 0),
]


@pytest.mark.parametrize(("text", "expected"), MER_CASES)
def test_mer_reads_one_asserted_emotion(text, expected):
    assert MER().parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), MSA_CASES)
def test_msa_reads_one_asserted_sentiment(text, expected):
    assert MSA().parse(text) == expected


@pytest.mark.parametrize(("text", "pairs", "ignored"), ECPE_CASES)
def test_ecpe_reads_pairs_indices_or_no_cause(text, pairs, ignored):
    expected = None if pairs is None else ECPEAnswer(pairs, ignored)
    assert ECPE().parse(text, record()) == expected


def test_the_issue_zero_shot_answer_gives_no_pairs_on_a_turn_3_target():
    # before: (3, 1), (3, 2), (3, 3) were read from "1.3 2.3 3.3 4.3" and scored against gold
    rec = record(turn=3, pairs=[(3, 1, "joy")])
    assert ECPE().parse("The emotion-cause indices of the target utterance are: 1.3 2.3 3.3 4.3", rec) is None


@pytest.mark.parametrize(("task", "rec", "hedge"), [
    (MER(), record(emotion="joy"), "Joy, anger or sadness."),
    (MER(), record(emotion="joy"), "I'm not happy at all."),
    (MER(), record(emotion="sadness"), "Neither sad nor angry, just neutral."),
    (MSA(), record(sentiment=1.0), "Positive? Negative."),
    (MSA(), record(sentiment=1.0), "Not positive."),
    (ECPE(), record(), "No, the cause is not 3; none."),
    (ECPE(), record(), "5_joy,3;5_anger,3;5_sadness,3"),
])
def test_hedged_and_negated_answers_earn_no_correctness_reward(task, rec, hedge):
    correct = task.weights["format"] + task.weights["correct"]
    assert task.reward(task.response(rec), rec) == pytest.approx(correct)
    assert task.reward(hedge, rec) <= task.weights["format"]  # at most "it parsed", never "it is right"


def test_hedges_are_counted_as_unparsed_in_evaluation():
    for task, rec, answers in [
        (MER(), record(emotion="joy"), ["Joy.", "Joy, anger or sadness.", "Not joy."]),
        (MSA(), record(sentiment=1.0), ["Positive.", "Positive? Negative.", "Not positive."]),
        (ECPE(), record(), ["5_joy,3", "5_joy,3 or none", "1.3 2.3"]),
    ]:
        metric = task.new_metric()
        task.update_metric(metric, [task.parse(a, rec) for a in answers], [task.target(rec)] * len(answers))
        assert int(metric.compute()["unparsed"]) == 2, task.name


def test_negation_scope_ends_at_punctuation_and_contrast_words():
    negated = {t.text: t.negated for t in tokens("He isn't sad or mad, he is glad but not calm")}
    assert negated["sad"] and negated["mad"] and not negated["glad"] and negated["calm"]
    assert not negated["isn't"]  # the negator itself is not negated


def test_cause_indices_and_no_cause():
    assert cause_indices("turns 2, 3 and 4") == [2, 3, 4]
    assert cause_indices("turn 2nd") == [] and cause_indices("utterance -2") == []
    assert says_no_cause('""') and says_no_cause("There is no cause.")
    assert not says_no_cause("no other cause") and not says_no_cause("2")
