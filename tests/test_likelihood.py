"""Closed-label answers by likelihood (issue 25): each allowed answer's log-probability given the prompt, the best
one taken (lm-evaluation-harness multiple choice), from `evaluation.answer(closed="likelihood")`, the module's
`closed_answers` (validation, test, predict) and `analyze`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from emoverse import EmoVerseModule, evaluation
from emoverse.backbones import create_backbone
from emoverse.data.collator import AMTCollator
from emoverse.data.dataset import make_example
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord
from emoverse.tasks import MER, MSA


def record(emotion: str = "anger", sentiment: float = -1.0) -> AMTRecord:
    labels = AMTLabels(emotion=emotion, sentiment=sentiment, reason="Because of the sandwich.")
    return AMTRecord(id="r", source="meld", split="val", text="You ate my sandwich!", speaker="Ross", labels=labels,
                     frames=[Image.new("RGB", (32, 32))])


def batch_for(module: EmoVerseModule, names: list[str]) -> dict:
    examples = [make_example(record(), module.tasks[n], module.processor, 1, 0) for n in names]
    return AMTCollator(module.processor, "generate")(examples)


def taught(answer: dict[str, str], steps: int = 60) -> EmoVerseModule:
    """tiny_text taught to answer each task's prompt with `answer[task]` (a few steps on that one example)."""
    torch.manual_seed(0)
    module = EmoVerseModule("tiny_text", tasks=sorted(answer), lr=1e-2)
    examples = [{**make_example(record(), module.tasks[n], module.processor, 1, 0), "response": a}
                for n, a in answer.items()]
    batch = AMTCollator(module.processor, "train")(examples)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        module.backbone.loss(batch)["loss"].backward()
        optimizer.step()
    return module.eval()


def test_closed_tasks_list_their_trained_answers() -> None:
    assert MSA().choices == ("Positive.", "Negative.")
    assert MER().choices == tuple(e.capitalize() + "." for e in EMOTIONS)
    assert MER().response(record("joy")) in MER().choices


def test_the_forced_choice_wins_and_its_score_is_the_answer_log_probability() -> None:
    module = taught({"msa": "Negative.", "mer": "Disgust."})
    batch = batch_for(module, ["msa", "mer"])
    rows = evaluation.answer(module.backbone, batch, module.tasks, closed="likelihood")
    assert [r["generation"] for r in rows] == ["Negative.", "Disgust."]
    assert rows[0]["prediction"] == -1.0 and rows[1]["prediction"] == "disgust"
    assert set(rows[1]["choice_logprobs"]) == set(MER().choices)
    # the score is the summed log-probability of the choice's tokens after the prompt, from the full logits
    proc = module.processor
    prompt = batch.inputs["input_ids"][0][batch.inputs["attention_mask"][0].bool()].tolist()
    tokens = proc.tokenize("Positive.")
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = module.backbone.core(input_ids=ids).logits.log_softmax(-1)[0]
    want = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(tokens))
    assert rows[0]["choice_logprobs"]["Positive."] == pytest.approx(want, abs=1e-3)


def test_open_tasks_still_generate_beside_ranked_ones() -> None:
    module = taught({"msa": "Negative.", "eri": "Because of the sandwich."})
    rows = evaluation.answer(module.backbone, batch_for(module, ["msa", "eri"]), module.tasks, closed="likelihood")
    assert "choice_logprobs" in rows[0] and "choice_logprobs" not in rows[1]
    assert rows[1]["generation"] == evaluation.generate(module.backbone, batch_for(module, ["eri"]), module.tasks)[0]


@pytest.mark.parametrize("name", ["tiny", "tiny_llava"])
def test_ranking_keeps_the_frames_of_a_vision_backbone(name: str) -> None:
    torch.manual_seed(0)
    module = EmoVerseModule(name, tasks=["msa"]).eval()
    batch = batch_for(module, ["msa", "msa"])
    scores = evaluation.choose(module.backbone, batch, module.tasks)
    assert all(set(s) == {"Positive.", "Negative."} and all(v < 0 for v in s.values()) for s in scores)
    dark = dataclasses.replace(batch, inputs={k: (torch.zeros_like(v) if k == "pixel_values" else v)
                                              for k, v in batch.inputs.items()})
    assert evaluation.choose(module.backbone, dark, module.tasks)[0] != scores[0]  # the frames are read


def test_the_module_option_reaches_evaluation_and_analyze() -> None:
    module = taught({"msa": "Negative.", "mer": "Disgust."})
    module.hparams.closed_answers = "likelihood"
    rows = module.predict_step(batch_for(module, ["msa", "mer"]), 0)
    assert [r["generation"] for r in rows] == ["Negative.", "Disgust."] and "choice_logprobs" in rows[0]
    assert module.analyze([], "You ate my sandwich!", ["msa", "mer"]) == {"msa": -1.0, "mer": "disgust"}
    with pytest.raises(ValueError, match=r"closed_answers='best'; expected one of \('generate', 'likelihood'\)"):
        EmoVerseModule("tiny_text", closed_answers="best")
    assert create_backbone("tiny_text")  # the option needs nothing of the backbone


def test_emoverse_test_scores_closed_answers_by_likelihood(demo_amt, tmp_path, monkeypatch) -> None:
    import json
    import sys

    from emoverse.cli import main
    from tests.test_cli import QUICKSTART

    monkeypatch.setattr(sys, "argv", ["emoverse"])
    out = tmp_path / "preds.jsonl"
    main(["test", "--config", str(QUICKSTART), "--data.init_args.path", str(demo_amt),
          "--model.init_args.backbone", "tiny_text", "--model.init_args.tasks", "[msa, mer, eri]",
          "--model.init_args.closed_answers", "likelihood", "--model.init_args.predictions_path", str(out),
          "--trainer.limit_test_batches", "4", "--data.init_args.eval_batch_size", "8",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    closed = [r for r in rows if r["task"] in ("msa", "mer")]
    assert closed and all(r["generation"] in (MSA().choices + MER().choices) and r["choice_logprobs"] for r in closed)
    assert all("choice_logprobs" not in r for r in rows if r["task"] == "eri")
