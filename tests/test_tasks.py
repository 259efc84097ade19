"""Tasks: prompts, answers, parsers (round trips, synonyms, garbage) and metric wiring."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance
from emoverse.tasks import (
    ECPE,
    ERI,
    FER,
    MER,
    MSA,
    ECPEAnswer,
    Task,
    get_task,
    list_tasks,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG = random.Random(0)

CONTEXT = [
    Utterance(1, "Chandler", "Please do not do that again .", "disgust"),
    Utterance(2, "Paul", "Uh , it is Paul .", "neutral"),
    Utterance(3, "Monica", "Buzz him in .", "neutral"),
    Utterance(4, "Joey", "Who is Paul ?", "neutral"),
]


def ecpe_record(pairs: list[tuple[int, int, str]] | None = None, turn: int = 5) -> AMTRecord:
    return AMTRecord(
        id=f"ecf_1375_{turn}", source="ecf", split="test", text="Paul , the wine guy , Paul ?", speaker="Ross",
        dialogue_id="1375", turn=turn, context=CONTEXT[: turn - 1],
        labels=AMTLabels(emotion="surprise", cause_pairs=[(5, 2, "surprise"), (5, 5, "surprise")] if pairs is None else pairs),
    )


def full_record() -> AMTRecord:
    record = ecpe_record()
    record.labels.sentiment = -0.5
    record.labels.au_caption = "Inner brow raiser, upper lid raiser and jaw drop."
    record.labels.reason = "He is shocked that Monica's date is Paul, the wine guy."
    return record


def perfect_scores(task: Task, answer: str, record: AMTRecord) -> dict[str, float]:
    metric = task.new_metric()
    task.update_metric(metric, [task.parse(answer, record)], [task.target(record)])
    return {k: float(v) for k, v in metric.compute().items()}


def test_registry_lists_the_five_tasks_and_rejects_unknown_names():
    assert list_tasks() == ["ecpe", "eri", "fer", "mer", "msa"]
    assert isinstance(get_task("mer"), MER)
    with pytest.raises(KeyError, match="registered tasks"):
        get_task("vqa")


@pytest.mark.parametrize("name", ["msa", "mer", "fer", "eri", "ecpe"])
def test_build_then_parse_round_trips_to_a_perfect_score(name):
    task, record = get_task(name), full_record()
    query, answer = task.build(record, RNG)
    assert query and answer
    scores = perfect_scores(task, answer, record)
    assert scores["unparsed"] == 0
    main = {"msa": "acc2_nn", "mer": "acc", "fer": "token_f1", "eri": "token_f1", "ecpe": "weighted_f1"}[name]
    assert scores[main] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["msa", "mer", "fer", "eri", "ecpe"])
def test_build_and_target_refuse_a_record_without_the_label(name):
    record = AMTRecord(id="bare", source="demo", split="train", text="hello")
    task = get_task(name)
    assert not task.has_label(record)
    with pytest.raises(ValueError, match=f"no label for task '{name}'"):
        task.build(record, RNG)
    with pytest.raises(ValueError, match="bare"):
        task.target(record)


@pytest.mark.parametrize("name", ["msa", "mer", "fer", "eri", "ecpe"])
def test_update_metric_rejects_mismatched_lengths(name):
    task = get_task(name)
    with pytest.raises(ValueError, match="preds has 0 items but target has 1"):
        task.update_metric(task.new_metric(), [], [task.target(full_record())])


def test_templates_are_validated_with_the_field_name():
    with pytest.raises(ValueError, match=r"MER\.template.*\['foo'\]"):
        MER(template="{foo}")
    with pytest.raises(ValueError, match=r"ECPE\.template"):
        ECPE(template="{conversation} {target}")
    with pytest.raises(ValueError, match="compat"):
        ECPE(compat="sklearn")
    assert MSA(template="Sentiment of '{utterance}'?").build(full_record(), RNG)[0] == "Sentiment of 'Paul , the wine guy , Paul ?'?"


def test_mer_prompt_and_answer_follow_the_released_format():
    record = AMTRecord(id="m", source="meld", split="test", text="Push!", labels=AMTLabels(emotion="joy"))
    query, answer = MER().build(record, RNG)
    assert query == (
        "The person says: 'Push!' <emotion> Please determine which emotion label in the video represents: "
        "anger, sadness, surprise, disgust, joy, neutral or fear."
    )
    assert answer == "Joy."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Joy.", "joy"), ("JOY", "joy"), ("happy", "joy"), ("Happiness!", "joy"), ("angry", "anger"),
        ("The person looks sad.", "sadness"), ("surprised", "surprise"), ("Disgusted.", "disgust"),
        ("scared", "fear"), ("afraid", "fear"), ("fearful", "fear"), ("calm", "neutral"),
        ("Neutral, maybe joy", None), ("The emotion is: Anger.", "anger"),
        ("", None), ("   ", None), ("confident and assertive", None), ("42", None),
    ],
)
def test_mer_parser(text, expected):
    assert MER().parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Positive.", 1.0), ("negative", -1.0), ("The sentiment is NEGATIVE.", -1.0), ("Neutral.", 0.0),
        ("-1.5", -1.5), ("score: 2.4", 2.4), ("+0.6", 0.6), ("Positive (score -2)", 1.0),
        ("7", None), ("I cannot tell.", None), ("", None),
    ],
)
def test_msa_parser(text, expected):
    assert MSA().parse(text) == expected


def test_msa_answer_uses_the_non_negative_rule():
    record = full_record()
    record.labels.sentiment = 0.0
    assert MSA().build(record, RNG)[1] == "Positive."
    record.labels.sentiment = -0.1
    assert MSA().build(record, RNG)[1] == "Negative."


def test_msa_unparsable_answer_is_wrong_and_counted():
    task = MSA()
    metric = task.new_metric()
    task.update_metric(metric, [task.parse("no idea"), task.parse("Positive.")], [1.0, 2.0])
    scores = metric.compute()
    assert scores["unparsed"] == 1 and float(scores["acc2_nn"]) == 0.5 and float(scores["acc2_np"]) == 0.5


@pytest.mark.parametrize("task", [FER(), ERI()])
def test_free_text_parsers_strip_and_reject_empty(task):
    assert task.parse("  Brow lowerer.\n") == "Brow lowerer."
    assert task.parse("") is None and task.parse(" \n ") is None


def test_fer_uses_the_peak_frame_and_eri_a_larger_budget():
    assert FER.frames == "peak" and MSA.frames == "clip" and FER.media == MSA.media == ("frames",)
    assert ERI.max_new_tokens >= 64 > MER.max_new_tokens


def test_ecpe_prompt_lists_turns_candidates_and_target():
    query, answer = ECPE().build(ecpe_record(), RNG)
    assert "Input conversation:1_disgust. Chandler: Please do not do that again .\n2_neutral. Paul:" in query
    assert "Candidate utterances:1_disgust." in query
    assert "\n5_surprise. Ross: Paul , the wine guy , Paul ?\nTarget utterance:5_surprise. Ross:" in query
    assert answer == "5_surprise,2;5_surprise,5"
    release_style, _ = ECPE(include_target_in_candidates=False).build(ecpe_record(), RNG)
    assert "4_neutral. Joey: Who is Paul ?\nTarget utterance:5_surprise" in release_style


def test_ecpe_answer_is_empty_without_cause_and_skips_unseen_future_causes():
    assert ECPE().build(ecpe_record(pairs=[]), RNG)[1] == ""
    record = ecpe_record(pairs=[(5, 6, "surprise"), (5, 3, "surprise")])
    assert ECPE().build(record, RNG)[1] == "5_surprise,3"
    assert ECPE().target(record)["pairs"] == [[5, 6, "surprise"], [5, 3, "surprise"]]


@pytest.mark.parametrize(
    ("text", "pairs", "ignored"),
    [
        ("5_surprise,2;5_surprise,5", ((5, 2, "surprise"), (5, 5, "surprise")), 0),
        ("The answer is 5_Surprised, 2 and also 5_surprise,2.", ((5, 2, "surprise"),), 0),  # synonym + duplicate
        ("5_surprise,2;5_surprise,9", ((5, 2, "surprise"),), 1),  # beyond the target turn
        ("5_surprise,0", (), 1),
        ("5_confident,2", (), 1),  # not an emotion
        ("Utterances 2 and 4 caused it; also 2.", ((5, 2, "surprise"), (5, 4, "surprise")), 0),
        ("utterance 2, 7 and 12", ((5, 2, "surprise"),), 2),
        ("", (), 0), ("None.", (), 0), ("There is no cause.", (), 0), ('""', (), 0),
    ],
)
def test_ecpe_parser(text, pairs, ignored):
    assert ECPE().parse(text, ecpe_record()) == ECPEAnswer(pairs, ignored)


def test_ecpe_parser_without_record():
    task = ECPE()
    assert task.parse("5_joy,2;5_joy,6") == ECPEAnswer(((5, 2, "joy"),), 1)  # bound = the pair's own turn
    assert task.parse("utterance 2") is None  # bare indices need the target turn and emotion
    assert task.parse("I do not know") is None
    assert task.parse("I do not know", ecpe_record()) is None
    assert task.parse_offline("utterance 2", {"turn": 5, "emotion": "joy"}) == ECPEAnswer(((5, 2, "joy"),))


def test_ecpe_metric_counts_unparsed_and_ignored():
    task, record = ECPE(), ecpe_record()
    metric = task.new_metric()
    preds = [task.parse("5_surprise,2;5_surprise,8", record), task.parse("I do not know", record)]
    task.update_metric(metric, preds, [task.target(record)] * 2)
    scores = metric.compute()
    assert int(scores["unparsed"]) == 1 and int(scores["ignored_pairs"]) == 1
    assert float(scores["precision"]) == pytest.approx(1.0) and float(scores["recall"]) == pytest.approx(0.5)


def test_mer_round_trip_on_real_meld_test_labels():
    path = DATA / "meld" / "test_sent_emo.csv"
    if not path.exists():
        pytest.skip(f"{path} not present (real MELD labels live outside the repo)")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    task = MER()
    records = [
        AMTRecord(id=f"meld_{i}", source="meld", split="test", text=r["Utterance"], labels=AMTLabels(emotion=r["Emotion"]))
        for i, r in enumerate(rows)
    ]
    answers = [task.build(r, RNG)[1] for r in records]
    assert set(answers) == {e.capitalize() + "." for e in EMOTIONS}
    assert [task.parse(a) for a in answers] == [r["Emotion"] for r in rows]
    assert "you’re coffee mugs" in task.build(records[0], RNG)[0]  # typographic quotes survive


def test_ecpe_round_trip_on_real_ecf2_conversations():
    path = DATA / "ecf" / "semeval2024_ecac" / "Subtask_2_test.json"
    if not path.exists():
        pytest.skip(f"{path} not present (real ECF 2.0 data lives outside the repo)")
    conversations = json.loads(path.read_text(encoding="utf-8"))[:40]
    task = ECPE()
    metric, unreachable = task.new_metric(), 0
    for conv in conversations:
        gold = [(int(e.split("_")[0]), int(c), e.split("_")[1]) for e, c in conv["emotion-cause_pairs"]]
        turns = conv["conversation"]
        for u in turns:
            turn = u["utterance_ID"]
            record = AMTRecord(
                id=f"ecf_{conv['conversation_ID']}_{turn}", source="ecf", split="test", text=u["text"], speaker=u["speaker"],
                dialogue_id=str(conv["conversation_ID"]), turn=turn,
                context=[Utterance(t["utterance_ID"], t["speaker"], t["text"], t["emotion"]) for t in turns[: turn - 1]],
                labels=AMTLabels(emotion=u["emotion"], cause_pairs=[p for p in gold if p[0] == turn]),
            )
            query, answer = task.build(record, RNG)
            assert f"Target utterance:{turn}_{u['emotion']}. {u['speaker']}: {u['text']}" in query
            unreachable += sum(c > turn for e, c, _ in record.labels.cause_pairs)
            task.update_metric(metric, [task.parse(answer, record)], [task.target(record)])
    scores = metric.compute()
    n_gold = sum(len(c["emotion-cause_pairs"]) for c in conversations)
    assert float(scores["precision"]) == pytest.approx(1.0, abs=1e-6)
    assert float(scores["recall"]) == pytest.approx((n_gold - unreachable) / n_gold, abs=1e-6)
    assert int(scores["unparsed"]) == 0


def test_task_media_are_validated_and_set_per_task() -> None:
    assert get_task("mer").media == ("frames",)
    assert get_task("mer", media=["audio", "frames"]).media == ("frames", "audio")  # MEDIA order
    assert get_task("msa", media=[]).media == ()
    for bad, says in [("video", "expected a list"), (["smell"], "distinct names"), (["audio", "audio"], "distinct"),
                      (["frames", "video"], "choose one")]:
        with pytest.raises(ValueError, match=says):
            get_task("mer", media=bad)
