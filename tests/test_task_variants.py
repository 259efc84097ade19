"""Task variants beyond the paper's prompts (issue 25): MER with the dialogue's preceding turns, end-to-end ECPE
without the turns' gold emotions; each a typed option whose default is the paper's prompt."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from emoverse.amt.sources.base import Candidate
from emoverse.amt.sources.meld import MELDSource
from emoverse.data.record import AMTLabels, AMTRecord, Utterance
from emoverse.tasks import ECPE, MER
from emoverse.tasks.ecpe import ECPE_TEMPLATE
from emoverse.tasks.mer import MER_TEMPLATE

RNG = random.Random(0)


def meld_record(turn: int = 4) -> AMTRecord:
    context = [Utterance(turn=k, speaker=s, text=t) for k, s, t in
               [(1, "Ross", "Hi."), (2, "Monica", "We got engaged!"), (3, "Ross", "What?"), (5, "Joey", "Later.")]]
    return AMTRecord(id="meld_val_d1_u3", source="meld", split="val", text="That is wonderful!", speaker="Rachel",
                     labels=AMTLabels(emotion="joy", sentiment=1.0), dialogue_id="meld_val_d1", turn=turn,
                     context=context)


def ecf_record(pairs: list[tuple[int, int, str]] | None = None) -> AMTRecord:
    context = [Utterance(turn=1, speaker="Ross", text="I lost my job.", emotion="sadness"),
               Utterance(turn=3, speaker="Ross", text="Thanks.", emotion="neutral")]
    return AMTRecord(id="ecf_c1_u2", source="ecf", split="val", text="Oh no, I am so sorry!", speaker="Rachel",
                     labels=AMTLabels(emotion="sadness", cause_pairs=[(2, 1, "sadness")] if pairs is None else pairs),
                     dialogue_id="ecf_c1", turn=2, context=context)


def test_mer_default_is_the_papers_prompt() -> None:
    assert MER().query(meld_record(), RNG) == MER_TEMPLATE.format(utterance="That is wonderful!")


def test_mer_with_context_shows_the_last_preceding_turns_without_labels() -> None:
    query = MER(context_turns=2).query(meld_record(), RNG)
    assert "Monica: We got engaged!\nRoss: What?\nNow Rachel says: 'That is wonderful!'" in query
    assert "Hi." not in query  # only the last 2 earlier turns
    assert "Later." not in query  # never a later turn (ECF records carry the whole conversation)
    assert "joy" not in query.split("Please")[0]
    first = MER(context_turns=3).query(meld_record(turn=1), RNG)
    assert "(the conversation starts here)" in first
    with pytest.raises(ValueError, match=r"MER.context_turns=-1; expected an integer >= 0"):
        MER(context_turns=-1)


def test_ecpe_default_shows_the_gold_emotions_as_the_release_does() -> None:
    task = ECPE()
    assert task.template == ECPE_TEMPLATE
    query = task.query(ecf_record(), RNG)
    assert "1_sadness. Ross: I lost my job." in query and "Target utterance:2_sadness. Rachel" in query
    assert task.parse("4", ecf_record()).pairs == ()  # outside the turns shown
    assert task.parse("1", ecf_record()).pairs == ((2, 1, "sadness"),)  # a bare index takes the shown emotion


def test_end_to_end_ecpe_hides_the_emotions_and_the_model_names_them() -> None:
    task = ECPE(show_emotions=False)
    query = task.query(ecf_record(), RNG)
    for emotion in ("sadness", "neutral"):
        assert f"_{emotion}." not in query
    assert "1. Ross: I lost my job.\n2. Rachel: Oh no, I am so sorry!" in query
    assert task.response(ecf_record()) == "2_sadness,1"
    assert task.response(ecf_record(pairs=[])) == "None"  # a target without cause is answered, not left empty
    assert task.parse("None", ecf_record()).pairs == ()
    assert task.parse("2_joy,1", ecf_record()).pairs == ((2, 1, "joy"),)  # the emotion the model named is scored
    assert task.parse("1", ecf_record()) is None  # no emotion named: the gold one must not fill it in
    assert task.parse_offline("1", task.target(ecf_record())) is None
    assert ECPE().parse_offline("1", ECPE().target(ecf_record())).pairs == ((2, 1, "sadness"),)


def test_meld_preceding_context_follows_dialogue_and_utterance_ids(tmp_path: Path) -> None:
    rows = ["Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime",
            "1,Hi.,Ross,neutral,neutral,0,0,1,1,0,0", "2,We got engaged!,Monica,joy,positive,0,1,1,1,0,0",
            "3,What?,Ross,surprise,negative,0,2,1,1,0,0", "4,Hello.,Joey,neutral,neutral,1,0,1,1,0,0"]
    (tmp_path / "dev_sent_emo.csv").write_text("\n".join(rows) + "\n")
    src = MELDSource(root=str(tmp_path), files={"val": "dev_sent_emo.csv"}, context="preceding")
    records = {c.record.id: c.record for c in src.read() if isinstance(c, Candidate)}
    third = records["meld_val_d0_u2"]
    assert [(u.turn, u.speaker, u.text, u.emotion) for u in third.context] == [(1, "Ross", "Hi.", None),
                                                                               (2, "Monica", "We got engaged!", None)]
    assert records["meld_val_d1_u0"].context == []
    plain = MELDSource(root=str(tmp_path), files={"val": "dev_sent_emo.csv"})
    assert all(c.record.context == [] for c in plain.read() if isinstance(c, Candidate))
    with pytest.raises(ValueError, match="context='all'; expected 'none' or 'preceding'"):
        MELDSource(root=str(tmp_path), context="all")


def test_an_answer_echoing_the_conversation_is_not_read_as_cause_indices() -> None:
    """SmolLM2-135M-Instruct zero-shot repeats the prompt's turns; their numbers are not causes."""
    echoed = "1. 1_sadness. Ross: I lost my job.\n2. 2_sadness. Rachel: Oh no"
    assert ECPE().parse(echoed, ecf_record()) is None
    assert ECPE().parse("The emotion-cause indices are:\n- 1_sadness. Ross: I lost", ecf_record()) is None
    assert ECPE(show_emotions=False).parse("1. Ross: I lost my job.", ecf_record()) is None
    assert ECPE().parse("The cause is utterance 1.", ecf_record()).pairs == ((2, 1, "sadness"),)  # prose stays
    assert ECPE().parse("2_sadness,1", ecf_record()).pairs == ((2, 1, "sadness"),)
