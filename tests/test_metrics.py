"""Metrics on real labels (MELD, ECF 2.0, CMU-MOSEI) against values counted by hand here."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from emoverse.data.record import EMOTIONS
from emoverse.metrics import (
    ECPEPairF1,
    EmotionAccuracyF1,
    EmotionF1,
    SentimentAcc2,
    TokenF1,
    conversation_key,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIX = ("anger", "disgust", "fear", "joy", "sadness", "surprise")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (real annotation data lives outside the repo, in ../shared/data)")
    return path


def weighted_f1_by_hand(truth: list, pred: list) -> float:
    """sklearn average='weighted' over the true classes, by plain counting."""
    support = Counter(truth)
    score = 0.0
    for label, n in support.items():
        tp = sum(t == p == label for t, p in zip(truth, pred))
        predicted = sum(p == label for p in pred)
        precision = tp / predicted if predicted else 0.0
        recall = tp / n
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        score += f1 * n / len(truth)
    return score


def values(metric) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute().items()}


# ---------------------------------------------------------------- MELD: EmotionAccuracyF1


@pytest.fixture(scope="module")
def meld_test() -> list[str]:
    with open(need(DATA / "meld" / "test_sent_emo.csv"), encoding="utf-8") as f:
        return [row["Emotion"] for row in csv.DictReader(f)]


def test_meld_gold_against_itself_is_perfect(meld_test):
    assert len(meld_test) == 2610
    metric = EmotionAccuracyF1()
    metric.update(meld_test, meld_test)
    assert values(metric) == {"acc": 1.0, "weighted_f1": 1.0, "unparsed": 0.0}


def test_meld_perturbed_predictions_match_hand_counts(meld_test):
    pred: list[str | None] = list(meld_test)
    for i in range(0, len(pred), 7):  # every 7th answer becomes "joy" (some were joy already)
        pred[i] = "joy"
    for i in range(3, len(pred), 50):
        pred[i] = None
    pred[5] = "happy"  # outside the label set: wrong, but not unparsable
    metric = EmotionF1(labels=EMOTIONS)
    for start in range(0, len(pred), 500):  # batches must add up like one update
        metric.update(pred[start : start + 500], meld_test[start : start + 500])
    got = values(metric)
    correct = sum(p == t for p, t in zip(pred, meld_test))
    assert got["acc"] == pytest.approx(correct / len(meld_test))
    assert got["weighted_f1"] == pytest.approx(weighted_f1_by_hand(meld_test, pred), rel=1e-6)
    assert got["unparsed"] == pred.count(None) == 53


def test_emotion_metric_rejects_bad_input():
    metric = EmotionAccuracyF1()
    with pytest.raises(ValueError, match="preds has 1 items but target has 2"):
        metric.update(["joy"], ["joy", "fear"])
    with pytest.raises(ValueError, match="'happy' is not one of labels"):
        metric.update(["joy"], ["happy"])
    with pytest.raises(ValueError, match="distinct"):
        EmotionAccuracyF1(labels=("joy", "joy"))


# ---------------------------------------------------------------- CMU-MOSEI: SentimentAcc2


@pytest.fixture(scope="module")
def mosei_signs() -> list[float]:
    """label2b of all 23,259 labelled segments: sign of the sentiment (-1, 0, 1)."""
    with open(need(DATA / "cmu_mosei" / "s3prl_labels" / "CMU_MOSEI_Labels.csv"), encoding="utf-8") as f:
        return [float(row["label2b"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def mosei_continuous() -> list[float]:
    path = need(DATA / "cmu_mosei" / "text_subset_ailiwood" / "mosei_text_label_subset.csv")
    with open(path, encoding="utf-8") as f:
        return [float(row["label"]) for row in csv.DictReader(f)]


def test_mosei_gold_against_itself_is_perfect(mosei_signs, mosei_continuous):
    for truth in (mosei_signs, mosei_continuous):
        metric = SentimentAcc2()
        metric.update(torch.tensor(truth), torch.tensor(truth))
        got = values(metric)
        assert got == {"acc2_nn": 1.0, "f1_nn": 1.0, "acc2_np": 1.0, "f1_np": 1.0, "unparsed": 0.0}


def test_mosei_all_zero_predictions_keep_or_drop_zero_truth(mosei_signs):
    n_neg, n_zero, n_pos = (mosei_signs.count(v) for v in (-1.0, 0.0, 1.0))
    assert (n_neg, n_zero, n_pos) == (6683, 5100, 11476)
    metric = SentimentAcc2()
    metric.update(torch.zeros(len(mosei_signs)), torch.tensor(mosei_signs))
    got = values(metric)
    # N/N keeps the zeros; a prediction of 0 is non-negative, so everything is "non-negative".
    assert got["acc2_nn"] == pytest.approx((n_zero + n_pos) / len(mosei_signs))
    truth_nn = ["non-neg" if t >= 0 else "neg" for t in mosei_signs]
    assert got["f1_nn"] == pytest.approx(weighted_f1_by_hand(truth_nn, ["non-neg"] * len(truth_nn)), rel=1e-6)
    # N/P drops the zeros; a prediction of exactly 0 counts as negative.
    assert got["acc2_np"] == pytest.approx(n_neg / (n_neg + n_pos))
    truth_np = ["pos" if t > 0 else "neg" for t in mosei_signs if t != 0]
    assert got["f1_np"] == pytest.approx(weighted_f1_by_hand(truth_np, ["neg"] * len(truth_np)), rel=1e-6)


def test_mosei_continuous_shifted_predictions(mosei_continuous):
    truth = mosei_continuous
    pred = [t - 0.5 for t in truth]
    pred[0] = math.nan  # unparsable: wrong under both schemes
    metric = SentimentAcc2()
    metric.update(pred, truth)
    got = values(metric)
    nn_truth = [t >= 0 for t in truth]
    nn_pred = [None if math.isnan(p) else p >= 0 for p in pred]
    assert got["acc2_nn"] == pytest.approx(sum(a == b for a, b in zip(nn_truth, nn_pred)) / len(truth))
    assert got["f1_nn"] == pytest.approx(weighted_f1_by_hand(nn_truth, nn_pred), rel=1e-6)
    kept = [(t > 0, None if math.isnan(p) else p > 0) for t, p in zip(truth, pred) if t != 0]
    assert got["acc2_np"] == pytest.approx(sum(a == b for a, b in kept) / len(kept))
    assert got["f1_np"] == pytest.approx(weighted_f1_by_hand(*map(list, zip(*kept))), rel=1e-6)
    assert got["unparsed"] == 1
    assert 0 < got["acc2_nn"] < 1


def test_sentiment_zero_truth_and_exact_zero_prediction():
    metric = SentimentAcc2()
    metric.update([0.0, 0.0, -1.0, 0.0, 1.0], [0.0, 2.0, 0.0, -1.0, 0.0])
    got = values(metric)
    # N/N keeps all five: 0 vs 0 right, 0 vs 2 right, -1 vs 0 wrong, 0 vs -1 wrong, 1 vs 0 right.
    assert got["acc2_nn"] == pytest.approx(3 / 5)
    # N/P keeps truth 2 and -1 only; a prediction of exactly 0 is negative: wrong, then right.
    assert got["acc2_np"] == pytest.approx(1 / 2)


def test_sentiment_rejects_bad_input():
    metric = SentimentAcc2()
    with pytest.raises(ValueError, match="preds has 2 items but target has 1"):
        metric.update([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="target contains NaN"):
        metric.update([1.0], [math.nan])


# ---------------------------------------------------------------- ECF 2.0: ECPEPairF1


@pytest.fixture(scope="module")
def ecf_test() -> tuple[list[tuple], list[dict]]:
    conversations = json.loads(need(DATA / "ecf" / "semeval2024_ecac" / "Subtask_2_test.json").read_text(encoding="utf-8"))
    gold = [
        (c["conversation_ID"], int(e.split("_")[0]), int(cause), e.split("_")[1])
        for c in conversations
        for e, cause in c["emotion-cause_pairs"]
    ]
    return gold, conversations


def ecpe_by_hand(gold: list[tuple], pred: list[tuple]) -> dict[str, float]:
    """The SemEval-2024 Task 3 Subtask 2 formulas, counted in plain Python (with the 1e-8 terms)."""
    gold_set, pred_set = set(gold), set(pred)
    g = Counter(p[3] for p in gold_set)
    n = Counter(p[3] for p in pred_set)
    tp = Counter(p[3] for p in pred_set & gold_set)
    f1 = {}
    for j in SIX:
        p_j, r_j = tp[j] / (n[j] + 1e-8), tp[j] / (g[j] + 1e-8)
        f1[j] = 2 * p_j * r_j / (p_j + r_j + 1e-8)
    total_g = sum(g[j] for j in SIX)
    p = sum(tp[j] for j in SIX) / (sum(n[j] for j in SIX) + 1e-8)
    r = sum(tp[j] for j in SIX) / (total_g + 1e-8)
    return {"f1": 2 * p * r / (p + r + 1e-8), "weighted_f1": sum(f1[j] * g[j] / total_g for j in SIX)}


def ecpe_scores(gold: list[tuple], pred: list[tuple], compat: str = "semeval") -> dict[str, float]:
    metric = ECPEPairF1(compat=compat)
    metric.update(pred, gold)
    return values(metric)


def test_ecf_gold_against_itself_is_perfect(ecf_test):
    gold, _ = ecf_test
    assert len(gold) == 2462
    for compat in ("semeval", "emoverse-release"):
        got = ecpe_scores(gold, gold, compat)
        for key in ("precision", "recall", "f1", "weighted_f1", "weighted_precision", "weighted_recall"):
            assert got[key] == pytest.approx(1.0, abs=1e-6)


def test_ecf_dropping_a_pair(ecf_test):
    gold, _ = ecf_test
    pred = [p for p in gold if p != gold[0]]
    got = ecpe_scores(gold, pred)
    g_j = sum(p[3] == gold[0][3] for p in gold)
    w_j = g_j / len(gold)
    expected_wf1 = (1 - w_j) + w_j * (2 * (g_j - 1) / (2 * g_j - 1))
    assert got["weighted_f1"] == pytest.approx(expected_wf1, abs=1e-6)
    assert got["recall"] == pytest.approx((len(gold) - 1) / len(gold), abs=1e-6)
    assert got["precision"] == pytest.approx(1.0, abs=1e-6)
    assert got["weighted_f1"] == pytest.approx(ecpe_by_hand(gold, pred)["weighted_f1"], abs=1e-7)


def test_ecf_false_pair_on_a_no_cause_utterance(ecf_test):
    gold, conversations = ecf_test
    conv = conversations[0]  # 1375: utterance 11 (fear) has no gold cause
    assert conv["conversation_ID"] == 1375 and not any(e.startswith("11_") for e, _ in conv["emotion-cause_pairs"])
    extra = (1375, 11, 1, "fear")
    pred = gold + [extra]
    g_fear = sum(p[3] == "fear" for p in gold)
    got = ecpe_scores(gold, pred)
    assert got["f1_fear"] == pytest.approx(2 * g_fear / (2 * g_fear + 1), abs=1e-6)  # P = g/(g+1), R = 1
    assert got["precision"] == pytest.approx(len(gold) / (len(gold) + 1), abs=1e-6)
    assert got["weighted_f1"] == pytest.approx(ecpe_by_hand(gold, pred)["weighted_f1"], abs=1e-7)
    # The released EmoVerse script never looks at utterances without gold cause.
    assert ecpe_scores(gold, pred, "emoverse-release")["weighted_f1"] == pytest.approx(1.0, abs=1e-6)
    # ...but a false pair on an utterance that has a gold cause counts in both modes.
    on_asked = gold + [(1375, 5, 1, "surprise")]
    assert ecpe_scores(gold, on_asked, "emoverse-release")["precision"] == pytest.approx(len(gold) / (len(gold) + 1), abs=1e-6)


def test_ecf_flipping_an_emotion(ecf_test):
    gold, _ = ecf_test
    victim = next(p for p in gold if p[3] == "joy")
    pred = [p for p in gold if p != victim] + [(*victim[:3], "sadness")]
    got = ecpe_scores(gold, pred)
    g_joy, g_sad = (sum(p[3] == e for p in gold) for e in ("joy", "sadness"))
    assert (g_joy, g_sad) == (914, 337)
    assert got["f1_joy"] == pytest.approx(2 * (g_joy - 1) / (2 * g_joy - 1), abs=1e-6)
    assert got["f1_sadness"] == pytest.approx(2 * g_sad / (2 * g_sad + 1), abs=1e-6)
    assert got["f1"] == pytest.approx((len(gold) - 1) / len(gold), abs=1e-6)  # P = R = (G-1)/G
    assert got["weighted_f1"] == pytest.approx(ecpe_by_hand(gold, pred)["weighted_f1"], abs=1e-7)


def test_ecf_duplicates_neutral_pairs_and_id_types(ecf_test):
    gold, _ = ecf_test
    pred = gold + gold[:100] + [(1375, 2, 1, "neutral")]  # duplicates removed; neutral enters no score
    pred = [(str(c), e, u, emo) for c, e, u, emo in pred]  # "1375" and 1375 are the same conversation
    got = ecpe_scores(gold, pred)
    assert got["f1"] == pytest.approx(1.0, abs=1e-6) and got["weighted_f1"] == pytest.approx(1.0, abs=1e-6)
    assert conversation_key(1375) == conversation_key("1375") != conversation_key("1376")


def test_ecf_merged_states_equal_one_update(ecf_test):
    """What DDP does: per-rank states concatenated before compute."""
    gold, _ = ecf_test
    pred = gold[::2] + [(1375, 11, 1, "fear")]
    half = len(gold) // 2
    rank0, rank1 = ECPEPairF1(), ECPEPairF1()
    rank0.update(pred[:half], gold[:half])
    rank1.update(pred[half:], gold[half:])
    rank0.merge_state(rank1)
    assert values(rank0) == pytest.approx(ecpe_scores(gold, pred))


def test_ecpe_rejects_malformed_pairs():
    metric = ECPEPairF1()
    with pytest.raises(ValueError, match="emotion 'happy' is not one of"):
        metric.update([(1, 2, 1, "happy")], [])
    with pytest.raises(ValueError, match="cause_utterance=0"):
        metric.update([(1, 2, 0, "joy")], [])
    with pytest.raises(ValueError, match="expected \\(conversation_id"):
        metric.update([(1, 2, "joy")], [])
    with pytest.raises(ValueError, match="compat"):
        ECPEPairF1(compat="other")


# ---------------------------------------------------------------- TokenF1


def test_token_f1_by_hand():
    metric = TokenF1()
    metric.update(["Brow lowerer, lip corner puller.", None, "jaw drop"], ["brow lowerer and lip tightener", "x", "Jaw drop."])
    got = values(metric)
    first = 2 * 3 / (5 + 5)  # brow, lowerer, lip shared
    assert got["token_f1"] == pytest.approx((first + 0 + 1) / 3)
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["unparsed"] == 1
    with pytest.raises(ValueError, match="preds has 1 items"):
        metric.update(["a"], [])
