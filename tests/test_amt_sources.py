"""Source readers and QC: real files parse to the documented counts; bad input is named or counted."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from emoverse.amt.facs import AU_TABLES, au_caption, load_au_table
from emoverse.amt.qc import QCLog, deduplicate
from emoverse.amt.sources import Candidate, ECFSource, MELDSource, MOSEISource, Rejected
from emoverse.curriculum import Curriculum, Stage
from emoverse.tasks import ECPE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "meld").exists(), reason=f"real annotation data not found at {DATA}")


def _split(items: list) -> tuple[list[Candidate], list[Rejected]]:
    return [i for i in items if isinstance(i, Candidate)], [i for i in items if isinstance(i, Rejected)]


@needs_data
def test_meld_reads_every_row_with_typographic_quotes_and_quoted_times() -> None:
    kept, rejected = _split(list(MELDSource(str(DATA / "meld"), sentiment_as_msa=True).read()))
    assert not rejected
    assert Counter(c.record.split for c in kept) == {"train": 9989, "val": 1109, "test": 2610}
    assert Counter(c.record.labels.emotion for c in kept if c.record.split == "test")["fear"] == 50
    first = kept[0].record
    assert first.id == "meld_train_d0_u0" and "company’s" in first.text and first.labels.sentiment == 0.0
    assert Counter(c.record.labels.sentiment for c in kept if c.record.split == "val") == {0.0: 470, -1.0: 406, 1.0: 233}


@needs_data
def test_ecf2_json_pairs_and_whole_conversation_context() -> None:
    source = ECFSource({"test": str(DATA / "ecf" / "semeval2024_ecac" / "Subtask_2_test.json")})
    kept, rejected = _split(list(source.read()))
    assert len(kept) == 3101 and not rejected
    pairs = [p for c in kept for p in c.record.labels.cause_pairs]
    assert len(pairs) == 2462
    assert sum(cause > emotion_turn for emotion_turn, cause, _ in pairs) == 86  # causes after the emotion turn
    task, rng = ECPE(), random.Random(0)
    later = next(c.record for c in kept if any(p[1] > p[0] for p in c.record.labels.cause_pairs))
    answer = task.build(later, rng)[1]
    assert all(f"{e}_{emotion},{c}" in answer for e, c, emotion in later.labels.cause_pairs)  # reachable now
    assert task.parse(answer, later).pairs == tuple(sorted(later.labels.cause_pairs))


@needs_data
def test_ecf1_text_and_subtask1_spans_agree_on_pairs() -> None:
    text, _ = _split(list(ECFSource({"train": str(DATA / "ecf" / "mecpe_ecf1" / "all_data_pair.txt")}).read()))
    spans_source = ECFSource({"train": str(DATA / "ecf" / "semeval2024_ecac" / "Subtask_1_train.json")})
    spans, _ = _split(list(spans_source.read()))
    assert len(text) == len(spans) == 13619
    assert sum(len(c.record.labels.cause_pairs) for c in text) == 9794
    assert sum(len(c.record.labels.cause_pairs) for c in spans) == 9256 and spans_source.duplicate_pairs == 108
    # the ECF 1.0 file has conversations with an empty pair line; their turns are annotated with no cause
    empty = [c for c in text if c.record.dialogue_id == "ecf_c4"]
    assert empty and all(c.record.labels.cause_pairs == [] for c in empty)


@needs_data
def test_mosei_splits_from_folds_and_segments_by_time() -> None:
    root = DATA / "cmu_mosei"
    source = MOSEISource(str(root / "text_subset_ailiwood" / "mosei_text_label_subset.csv"),
                         folds=str(root / "standard_folds"), segments=str(root / "s3prl_labels" / "CMU_MOSEI_Labels.csv"),
                         videos="/videos")
    kept, rejected = _split(list(source.read()))
    assert not rejected and Counter(c.record.split for c in kept) == {"train": 27, "val": 22, "test": 25}
    first = kept[0]
    assert first.record.id == "mosei_-3g5yACwYnA_82_7645" and first.record.labels.sentiment == 1.0
    assert (first.clip.video, first.clip.start, first.clip.end) == (Path("/videos/-3g5yACwYnA.mp4"), 82.753, 100.555)


def test_mosei_fold_conflicts_and_emotions(tmp_path: Path) -> None:
    labels = tmp_path / "label.csv"
    labels.write_text("video_id,clip_id,text,label,mode,happy,sad,anger,surprise,disgust,fear\n"
                      "v1,0,good,1.5,train,2,0,0,0,0,0\n"
                      "v1,1,meh,0.0,test,0,0,0,0,0,0\n"       # the fold says train
                      "v2,0,what,-1,train,0,1,1,0,0,0\n"      # not in any fold
                      "v1,2,,1,train,0,0,0,0,0,0\n"           # empty text
                      "v1,3,bad,4,train,0,0,0,0,0,0\n"        # out of range
                      "v1,4,tie,-1,train,0,1,1,0,0,0\n")      # sad = anger
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"train": ["v1"], "valid": [], "test": []}))
    source = MOSEISource(str(labels), folds=str(folds), emotions_as_mer=True, videos="/raw", openface="/of")
    kept, rejected = _split(list(source.read()))
    assert [r.reason for r in rejected] == ["conflicting_labels", "no_split", "empty_text", "label_out_of_range"]
    assert "label.csv line 3" in rejected[0].origin
    assert [(c.record.labels.emotion, c.removed) for c in kept] == [("joy", ()), (None, ("emotion_tie",))]
    # integer clip ids are MMSA's segment files, whole
    assert (kept[0].clip.video, kept[0].clip.au_csv, kept[0].clip.start) == (Path("/raw/v1/0.mp4"), Path("/of/v1/0.csv"), None)


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "train_sent_emo.csv").write_text("Sr No.,Text,Speaker\n1,hi,Joey\n")
    with pytest.raises(ValueError, match=r"train_sent_emo.csv: missing columns \['Utterance'"):
        list(MELDSource(str(tmp_path), files={"train": "train_sent_emo.csv"}).read())
    with pytest.raises(FileNotFoundError, match="MELD source: folder .*nowhere not found"):
        list(MELDSource(str(tmp_path / "nowhere")).read())
    bad = tmp_path / "ecf.txt"
    bad.write_text("1 2\n(1,1)\n1 | Joey | joy | Hi . | x\n2 | Ross joy\n")
    with pytest.raises(ValueError, match=r"ecf.txt line 4: expected 'turn \| speaker"):
        list(ECFSource({"train": str(bad)}).read())
    bad.write_text("1 3\n(1,1)\n1 | Joey | joy | Hi . | x\n")
    with pytest.raises(ValueError, match="ecf.txt line 1: conversation 1 announces 3 turns"):
        list(ECFSource({"train": str(bad)}).read())


def test_ecf_pair_to_a_missing_turn_removes_the_conversation_ecpe_labels(tmp_path: Path) -> None:
    path = tmp_path / "ecf.json"
    conv = {"conversation_ID": 7, "conversation": [
        {"utterance_ID": 1, "text": "Hi .", "speaker": "Joey", "emotion": "joy"},
        {"utterance_ID": 2, "text": "Ugh .", "speaker": "Ross", "emotion": "disgust"}],
        "emotion-cause_pairs": [["2_disgust", "1"], ["2_disgust", "9"]]}
    path.write_text(json.dumps([conv]))
    kept, _ = _split(list(ECFSource({"test": str(path)}).read()))
    assert [c.record.labels.cause_pairs for c in kept] == [None, None]
    assert all(c.removed == ("bad_cause_pair",) and c.record.labels.emotion for c in kept)  # MER stays


def test_duplicates_and_conflicts_are_counted() -> None:
    from emoverse.data.record import AMTLabels, AMTRecord

    def cand(rid: str, emotion: str, origin: str) -> Candidate:
        return Candidate(AMTRecord(rid, "meld", "train", "hi", AMTLabels(emotion=emotion)), None, origin)

    log = QCLog()
    kept = deduplicate([cand("a", "joy", "f:2"), cand("a", "joy", "f:3"), cand("b", "joy", "f:4"),
                        cand("b", "anger", "f:5")], log)
    assert [c.origin for c in kept] == ["f:2"]
    assert log.counts()["dropped"] == {"conflicting_labels": 2, "duplicate_id": 1}


def test_au_tables_are_complete_and_loadable(tmp_path: Path) -> None:
    for table in AU_TABLES.values():
        table.check()
    assert au_caption({6, 12, 14}, "joy", AU_TABLES["merr"]) == "Cheek raiser, lip corner puller, dimpler."
    custom = tmp_path / "table.yaml"
    custom.write_text("source: my lab\nemotions: {joy: [12], sadness: [15], surprise: [26], fear: [20], anger: [23],"
                      " disgust: [9], neutral: []}\n")
    assert au_caption({12, 6}, "joy", load_au_table(custom)) == "Lip corner puller."
    custom.write_text("source: my lab\nemotions: {joy: [12]}\n")
    with pytest.raises(ValueError, match="emotions missing"):
        load_au_table(custom)


def test_stage_sources_restrict_the_pool() -> None:
    records = [frozenset({"mer", "source:meld"})] * 6 + [frozenset({"mer", "ecpe", "source:ecf"})] * 4
    meld_only = Curriculum([Stage(name="mer", ratios={"mer": 1}, budget="all", sources=["meld"])])
    meld_only.bind(records)
    assert sorted({i for i, _ in meld_only.draws(0)}) == list(range(6))
    both = Curriculum([Stage(name="mer", ratios={"mer": 1}, budget="all")])
    both.bind(records)
    assert len({i for i, _ in both.draws(0)}) == 10
    with pytest.raises(ValueError, match=r"Stage 'x': sources=\['friends'\]"):
        Stage(name="x", ratios={"mer": 1}, sources=["friends"])
    untagged = [frozenset({"mer"})] * 3
    with pytest.raises(ValueError, match="records carry no source"):
        Curriculum([Stage(name="mer", ratios={"mer": 1}, sources=["meld"])]).bind(untagged)


def test_build_counts_every_removal_and_drop_in_the_manifest(tmp_path: Path) -> None:
    from emoverse.amt import AMTBuildConfig, build_amt

    path = tmp_path / "ecf.json"
    conversations = [
        {"conversation_ID": 7, "conversation": [
            {"utterance_ID": 1, "text": "Hi .", "speaker": "Joey", "emotion": "joy"},
            {"utterance_ID": 2, "text": "Ugh .", "speaker": "Ross", "emotion": "disgust"}],
         "emotion-cause_pairs": [["2_disgust", "9"]]},
        {"conversation_ID": 8, "conversation": [
            {"utterance_ID": 1, "text": " ", "speaker": "Joey", "emotion": "joy"},
            {"utterance_ID": 2, "text": "Wow .", "speaker": "Ross", "emotion": "awe"},
            {"utterance_ID": 3, "text": "Yes !", "speaker": "Ross", "emotion": "joy"}],
         "emotion-cause_pairs": [["3_joy", "3"], ["3_joy", "3"]]},
    ]
    path.write_text(json.dumps(conversations))
    manifest = build_amt(AMTBuildConfig(output=str(tmp_path / "amt"), ecf=ECFSource({"train": str(path)}),
                                        require_media=False), progress=False)
    assert manifest["source_rows"] == {"ecf": {"train": 5}}
    assert manifest["dropped"] == {"empty_text": 1, "label_out_of_range": 1}
    assert manifest["labels_removed"] == {"bad_cause_pair": 2, "invalid_turn_emotion": 1}
    assert manifest["notes"] == {"ecf_duplicate_pairs_merged": 1}
    assert manifest["table1"]["Total"] == 3 and manifest["table1"]["Emotion Cause-Pair Extraction"] == 0
    qc = [json.loads(line) for line in (tmp_path / "amt" / "qc.jsonl").read_text().splitlines()]
    assert {q["id"] for q in qc if q["kind"] == "drop"} == {"ecf_c8_u1", "ecf_c8_u2"}
