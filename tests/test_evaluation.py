"""Evaluation and prediction: batched generation, validate/test/predict, the test JSONL, `analyze`."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from emoverse import AMTDataModule, EmoVerseModule, evaluation, make_demo_amt
from emoverse.data.collator import AMTCollator
from emoverse.data.faces import draw_face
from emoverse.data.record import EMOTIONS
from emoverse.scoring import score_predictions
from emoverse.tasks import ECPEAnswer

TASKS = ("msa", "mer", "fer", "eri", "ecpe")
METRICS = {"msa": ["acc2_nn", "f1_nn", "acc2_np", "f1_np"], "mer": ["acc", "weighted_f1"],
           "fer": ["token_f1", "exact_match"], "eri": ["token_f1", "exact_match"], "ecpe": ["f1", "weighted_f1"]}


@pytest.fixture(scope="module")
def small_amt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small_amt")
    make_demo_amt(path, seed=1, num_monologues=30, num_dialogues=10)
    return path


# Small, different per-task generation budgets keep the tests fast and make mixed batches uneven.
BUDGETS = {"msa": 3, "mer": 4, "fer": 8, "eri": 7, "ecpe": 6}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine, waiting OpenMP threads slow generation several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def module() -> EmoVerseModule:
    torch.manual_seed(0)
    module = EmoVerseModule("tiny")
    for name, budget in BUDGETS.items():
        module.tasks[name].max_new_tokens = budget
    return module


def datamodule(path: Path, module: EmoVerseModule, **kwargs: Any) -> AMTDataModule:
    return AMTDataModule(str(path), eval_batch_size=kwargs.pop("eval_batch_size", 8), processor=module.processor,
                         tasks=module.tasks, **kwargs)


def trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)


def mixed_examples(path: Path, module: EmoVerseModule) -> list[dict[str, Any]]:
    dm = datamodule(path, module)
    dm.setup("test")
    ds = dm.datasets["test"]
    return [ds[p] for t in TASKS for p in ds.pairs([t])[:2]]


def test_batched_generation_equals_one_at_a_time(small_amt, module):
    module.eval()
    examples = mixed_examples(small_amt, module)
    collate = AMTCollator(module.processor, "generate")
    batch = collate(examples)
    lengths = batch.inputs["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= 4  # prompts of mixed lengths: real left padding

    calls: list[dict[str, Any]] = []
    llm = module.backbone.core.llm
    hook = llm.register_forward_pre_hook(lambda _, args, kw: calls.append(kw), with_kwargs=True)
    try:  # rows stop at their own task's budget, as singles do
        batched = evaluation.generate(module.backbone, batch, module.tasks)
    finally:
        hook.remove()
    singles = [evaluation.generate(module.backbone, collate([ex]), module.tasks)[0] for ex in examples]
    assert batched == singles
    assert any(batched)

    # Position ids count real tokens only (left pads do not shift them) and continue while decoding.
    prefill, step = calls[0]["position_ids"], calls[1]["position_ids"]
    width = batch.inputs["attention_mask"].shape[1]
    for row, n in enumerate(lengths.tolist()):
        assert prefill[row, width - n:].tolist() == list(range(n))
        assert step[row].tolist() == [n]


def test_validate_logs_every_task_metric(small_amt, module):
    dm = datamodule(small_amt, module, max_eval_per_task=3)
    results = trainer().validate(module, dm)[0]
    for task in TASKS:
        for name in [*METRICS[task], "unparsed"]:
            assert f"val/{task}/{name}" in results
        assert 0 <= results[f"val/{task}/unparsed"] <= 3
        assert not module.metrics[f"val_{task}"].update_called  # reset for the next epoch


def oracle_on_even_rows(module: EmoVerseModule, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other row answers with its gold response, so scores are not all zero and ECPE parses."""
    real = evaluation.generate

    def generate(backbone: Any, batch: dict[str, Any], tasks: Any, max_new_tokens: int | None = None) -> list[str]:
        texts = real(backbone, batch, tasks, max_new_tokens)
        return [module.tasks[t].response(r) if i % 2 == 0 else x
                for i, (t, r, x) in enumerate(zip(batch.tasks, batch.records, texts, strict=True))]

    monkeypatch.setattr(evaluation, "generate", generate)


def test_test_jsonl_rescored_offline_matches_logged(small_amt, module, tmp_path, monkeypatch):
    oracle_on_even_rows(module, monkeypatch)
    path = tmp_path / "preds.jsonl"
    monkeypatch.setitem(module.hparams, "predictions_path", str(path))
    dm = datamodule(small_amt, module, eval_batch_size=5)
    logged = trainer().test(module, dm)[0]

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    expected = len(dm.test_dataloader().dataset)
    assert len(rows) == expected and {r["task"] for r in rows} == set(TASKS)
    assert all(list(r) == ["id", "task", "prompt", "generation", "prediction", "target"] for r in rows)
    ecpe = [r for r in rows if r["task"] == "ecpe" and r["prediction"] is not None]
    assert ecpe and all(set(r["prediction"]) == {"pairs", "ignored"} for r in ecpe)

    scored = score_predictions(path)
    assert sorted(scored) == sorted(TASKS)
    for task, scores in scored.items():
        for name, value in scores.items():
            if name != "n":
                assert logged[f"test/{task}/{name}"] == pytest.approx(value, abs=1e-6), (task, name)
    assert sum(s["n"] for s in scored.values()) == expected
    assert logged["test/mer/acc"] > 0 and logged["test/ecpe/f1"] > 0  # the oracle rows score


def test_predict_returns_parsed_rows(small_amt, module):
    dm = datamodule(small_amt, module)
    batches = trainer().predict(module, dm)
    rows = [r for b in batches for r in b]
    assert len(rows) == len(dm.predict_dataloader().dataset)
    assert {r["task"] for r in rows} == set(TASKS)
    for r in rows:
        assert list(r) == ["id", "task", "prompt", "generation", "prediction"]
        if r["task"] in ("msa", "mer", "fer", "eri"):
            assert r["prediction"] == module.tasks[r["task"]].parse(r["generation"])
        else:
            assert r["prediction"] is None or set(r["prediction"]) == {"pairs", "ignored"}  # JSON data


@pytest.mark.parametrize("kind", ["empty", "garbage"])
def test_unreadable_generations_count_as_unparsed(small_amt, module, monkeypatch, kind):
    if kind == "empty":  # the LLM stops at once: every decoded answer is ""
        def generate(**kw: Any) -> torch.Tensor:
            return torch.full((kw["inputs_embeds"].shape[0], 1), kw["eos_token_id"][0])
        monkeypatch.setattr(module.backbone.core.llm, "generate", generate)
    else:
        junk = {"msa": ["Negative. " * 300, "42 17"], "mer": ["\x00\ufffd", "-1"], "fer": ["   "], "eri": [""],
                "ecpe": ["blah ¿?", "7_joy,99"]}  # "7_joy,99": a pair whose cause is out of range
        monkeypatch.setattr(evaluation, "generate", lambda backbone, batch, tasks, max_new_tokens=None: [
            junk[t][i % len(junk[t])] for i, t in enumerate(batch.tasks)])
    dm = datamodule(small_amt, module, max_eval_per_task=6)
    results = trainer().validate(module, dm)[0]
    rows = {t: len(dm.datasets["val"].pairs([t])[:6]) for t in TASKS}
    if kind == "empty":
        for task in ("msa", "mer", "fer", "eri"):
            assert results[f"val/{task}/unparsed"] == rows[task]
        assert results["val/ecpe/unparsed"] == 0  # "" is ECPE's trained "no cause" answer
        assert results["val/mer/acc"] == 0
    else:
        assert results["val/mer/unparsed"] == rows["mer"] and results["val/eri/unparsed"] == rows["eri"]
        assert 0 < results["val/msa/unparsed"] < rows["msa"]  # "Negative…" parses, 42 is out of range
        assert results["val/ecpe/unparsed"] > 0 and results["val/ecpe/ignored_pairs"] > 0


def clip(emotion: str = "joy", n: int = 4) -> list[Any]:
    return [draw_face(emotion, 0.9, random.Random(k), 64) for k in range(n)]


def test_analyze_end_to_end(module):
    module.train()
    out = module.analyze(clip(), "I got the job.", tasks=["msa", "mer", "fer", "eri"])
    assert list(out) == ["msa", "mer", "fer", "eri"]
    assert out["msa"] is None or -3 <= out["msa"] <= 3
    assert out["mer"] is None or out["mer"] in EMOTIONS
    assert all(out[t] is None or isinstance(out[t], str) for t in ("fer", "eri"))
    assert module.training  # restored


def test_analyze_ecpe_uses_context_and_mer_emotion(module, monkeypatch):
    asked: list[list[str]] = []
    answers = {"msa": "Positive.", "mer": "Happy.", "ecpe": "3_joy,1;3_joy,3"}

    def generate(backbone: Any, batch: dict[str, Any], tasks: Any, max_new_tokens: int | None = None) -> list[str]:
        asked.append(batch.queries)
        return [answers[t] for t in batch.tasks]

    monkeypatch.setattr(evaluation, "generate", generate)
    context = [{"speaker": "Ross", "text": "Guess what, I got the job.", "emotion": "neutral"},
               {"speaker": "Rachel", "text": "Really?", "emotion": "surprise"}]
    out = module.analyze(clip(), "I am so happy about it.", tasks=["msa", "ecpe"], speaker="Ross", context=context)
    assert out == {"msa": 1.0, "ecpe": ECPEAnswer(((3, 1, "joy"), (3, 3, "joy")))}
    assert len(asked) == 2 and len(asked[0]) == 2  # msa + mer (for the emotion) first, then ecpe
    assert "3_joy. Ross: I am so happy about it." in asked[1][0] and "1_neutral. Ross:" in asked[1][0]

    out = module.analyze(clip(), "Oh no.", tasks=["ecpe"], context=context, emotion="fear")
    assert asked[-1][0].count("3_fear.") >= 1 and len(asked) == 3  # explicit emotion: no mer call


def test_analyze_errors(module):
    with pytest.raises(ValueError, match="expected a non-empty list"):
        module.analyze(clip(), "Hi.", tasks=["vqa"])
    with pytest.raises(ValueError, match=r"turns \[1\] have none"):
        module.analyze(clip(), "Hi.", tasks=["ecpe"], context=[{"speaker": "A", "text": "Yo."}], emotion="joy")
    with pytest.raises(ValueError, match="emotion='happy'"):
        module.analyze(clip(), "Hi.", tasks=["ecpe"], emotion="happy")
    with pytest.raises(ValueError, match=r"context\[0\]"):
        module.analyze(clip(), "Hi.", tasks=["ecpe"], context=[{"who": "A"}], emotion="joy")
