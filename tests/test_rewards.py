"""`Task.reward`: the format and correctness terms of every task, their weights, and the one code path
shared with evaluation (the reward reads the same parse and target the metric scores)."""

from __future__ import annotations

import pytest

from emoverse.data.record import AMTLabels, AMTRecord, Utterance
from emoverse.metrics.text import token_f1
from emoverse.tasks import ECPE, ERI, FER, MER, MSA, Task, get_task, list_tasks

CONTEXT = [
    Utterance(1, "Chandler", "Please do not do that again .", "disgust"),
    Utterance(2, "Paul", "Uh , it is Paul .", "neutral"),
    Utterance(3, "Monica", "Buzz him in .", "neutral"),
    Utterance(4, "Joey", "Who is Paul ?", "neutral"),
]


def record(sentiment: float = -0.5, pairs: list[tuple[int, int, str]] | None = None) -> AMTRecord:
    return AMTRecord(
        id="ecf_1375_5", source="ecf", split="train", text="Paul , the wine guy , Paul ?", speaker="Ross",
        dialogue_id="1375", turn=5, context=CONTEXT,
        labels=AMTLabels(sentiment=sentiment, emotion="surprise", au_caption="Inner brow raiser and jaw drop.",
                         reason="He is shocked that the date is Paul.",
                         cause_pairs=[(5, 2, "surprise"), (5, 5, "surprise")] if pairs is None else pairs),
    )


def test_every_builtin_task_has_a_reward_and_the_trained_answer_earns_the_most():
    rec = record()
    for name in list_tasks():
        task = get_task(name)
        assert task.has_reward, name
        best = task.reward(task.response(rec), rec)
        assert best == pytest.approx(task.weights["format"] + task.weights["correct"]), name
        assert task.reward("", rec) == 0.0 or name in {"ecpe"}, name  # an empty ECPE answer means "no cause"


def test_msa_polarity_and_closeness():
    task, rec = MSA(), record(sentiment=-0.5)
    assert task.reward("Negative.", rec) == pytest.approx(1.1)
    assert task.reward("Positive.", rec) == pytest.approx(0.1)  # parses, wrong polarity
    assert task.reward("no idea", rec) == 0.0  # unparsed: no format term either
    assert task.reward("Neutral.", record(sentiment=0.0)) == pytest.approx(1.1)  # N/N: 0 is non-negative
    close = MSA(reward_weights={"format": 0.0, "correct": 0.0, "closeness": 1.0})
    assert close.reward("-0.5", rec) == pytest.approx(1.0)
    assert close.reward("2.5", rec) == pytest.approx(1 - 3.0 / 6)
    assert close.reward("Positive.", record(sentiment=-3.0)) == pytest.approx(1 - 4.0 / 6)


def test_mer_label_match_with_synonyms():
    task, rec = MER(), record()
    assert task.reward("Surprise.", rec) == pytest.approx(1.1)
    assert task.reward("I am shocked", rec) == pytest.approx(1.1)  # the parser's synonyms, as evaluation reads them
    assert task.reward("Joy.", rec) == pytest.approx(0.1)
    assert task.reward("blue", rec) == 0.0


def test_free_text_rewards_are_the_metrics_token_f1():
    rec = record()
    for task, gold in ((FER(), rec.labels.au_caption), (ERI(), rec.labels.reason)):
        answer = "inner brow raiser, lip corner puller"
        assert task.reward(answer, rec) == pytest.approx(0.1 + token_f1(answer, gold))
        assert task.reward("   ", rec) == 0.0  # nothing said: unparsed


def test_ecpe_pair_f1_against_the_utterances_gold_pairs():
    task, rec = ECPE(), record()
    assert task.reward("5_surprise,2;5_surprise,5", rec) == pytest.approx(1.1)
    assert task.reward("5_surprise,2", rec) == pytest.approx(0.1 + 2 * 1 / 3)  # P 1, R 1/2
    assert task.reward("5_surprise,2;5_surprise,3;5_surprise,4", rec) == pytest.approx(0.1 + 2 * 1 / 5)
    assert task.reward("5_joy,2", rec) == pytest.approx(0.1)  # the emotion must match too
    assert task.reward("None.", rec) == pytest.approx(0.1)  # parses, misses both pairs
    no_cause = record(pairs=[])
    assert task.reward("None.", no_cause) == pytest.approx(1.1)  # a right "no cause" answer
    assert task.reward("5_surprise,2", no_cause) == pytest.approx(0.1)
    assert task.reward("blah blah", rec) == 0.0


def test_reward_matches_what_evaluation_scores():
    """One code path: the correctness term equals the task metric of the same single answer."""
    rec = record()
    for task, answer, key in ((MER(), "Surprise.", "acc"), (FER(), "inner brow raiser", "token_f1"),
                              (ECPE(), "5_surprise,2", "f1")):
        metric = task.new_metric()
        task.update_metric(metric, [task.parse(answer, rec)], [task.target(rec)])
        scored = float(metric.compute()[key])
        weights = {"format": 0.0, "correct": 1.0}
        assert type(task)(reward_weights=weights).reward(answer, rec) == pytest.approx(scored, abs=1e-6), key


def test_reward_weights_are_validated_with_the_field_named():
    with pytest.raises(ValueError, match=r"MER: reward_weights has unknown term\(s\) \['closeness'\]"):
        MER(reward_weights={"closeness": 1.0})
    with pytest.raises(ValueError, match=r"FER: reward_weights\['format'\]=-1"):
        FER(reward_weights={"format": -1})
    assert ECPE(reward_weights={"format": 0.5}).weights == {"format": 0.5, "correct": 1.0}


def test_a_task_without_reward_terms_has_no_reward():
    class NoReward(MER):
        pass

    assert NoReward().has_reward  # inherits MER's

    class Bare(Task):
        name = "bare"

        def has_label(self, record): return True
        def query(self, record, rng): return "q"
        def response(self, record): return "a"
        def parse(self, text, record=None): return text or None
        def target(self, record): return "a"
        def new_metric(self): return None
        def update_metric(self, metric, predictions, targets): return None

    assert not Bare().has_reward
    with pytest.raises(NotImplementedError, match="task 'bare' has no reward"):
        Bare().reward("a", record())


def test_reward_needs_the_label():
    unlabelled = AMTRecord(id="x", source="demo", split="train", text="hi", labels=AMTLabels())
    with pytest.raises(ValueError, match="has no label for task 'mer'"):
        MER().reward("Joy.", unlabelled)


def test_reward_terms_sum_to_the_reward_and_a_length_penalty_is_per_task():
    rec = record()
    for name in list_tasks():
        task = get_task(name)
        for text in (task.response(rec), "", "no idea at all"):
            terms = task.reward_breakdown(text, rec)
            assert set(terms) >= set(task.weights) and "length" not in terms  # off by default
            assert sum(terms.values()) == pytest.approx(task.reward(text, rec)), (name, text)
    eri = get_task("eri", length_penalty=0.05)
    answer = eri.response(rec)
    words = len(answer.split())
    terms = eri.reward_breakdown(answer, rec)
    assert terms["length"] == pytest.approx(-0.05 * words)
    assert eri.reward(answer, rec) == pytest.approx(get_task("eri").reward(answer, rec) - 0.05 * words)
    assert get_task("mer").length_penalty == 0.0  # per task: the others are untouched
    with pytest.raises(ValueError, match=r"task 'eri': length_penalty=-1, expected a finite float >= 0"):
        get_task("eri", length_penalty=-1)
