"""Preference (DPO on verifier-ranked samples): the loss against a hand computation, the pairs the rewards
make, the settings' validation, the step on the tiny backbone (zero implicit reward at the reference, the
gradient's direction), and a fit with a preference stage stopped and resumed mid-stage equals the
uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from emoverse import AMTDataModule, EmoVerseModule, Stage
from emoverse.curriculum import Curriculum
from emoverse.data import GroupBatch, make_demo_amt
from emoverse.objectives import Preference
from emoverse.objectives.preference import GOLD, dpo_loss, preference_pairs
from tests.stop_and_resume import BATCH, check_exact_resume

# three pairs: log π_θ and log π_ref of the chosen and the rejected answer (summed over their tokens)
CHOSEN = [-3.0, -5.5, -2.0]
REJECTED = [-4.0, -5.0, -2.0]
REF_CHOSEN = [-3.5, -5.0, -2.5]
REF_REJECTED = [-3.0, -6.0, -1.0]


def hand_dpo(beta: float, valid: list[bool]) -> dict[str, float]:
    """Rafailov et al. (2023) eq. 7 written out: -log σ(β (log π_w/π_ref,w - log π_l/π_ref,l)), averaged."""
    losses, margins = [], []
    for c, r, rc, rr, ok in zip(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, valid):
        if not ok:
            continue
        z = beta * (c - rc) - beta * (r - rr)
        losses.append(-math.log(1.0 / (1.0 + math.exp(-z))))
        margins.append(z)
    return {"loss": sum(losses) / len(losses), "margin": sum(margins) / len(margins),
            "accuracy": sum(m > 0 for m in margins) / len(margins)}


@pytest.mark.parametrize(("beta", "valid"), [(0.1, [True, True, True]), (0.5, [True, False, True])])
def test_dpo_loss_equals_a_hand_computation(beta: float, valid: list[bool]):
    t = [torch.tensor(x, dtype=torch.float64) for x in (CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)]
    out = dpo_loss(*t, beta, torch.tensor(valid))
    want = hand_dpo(beta, valid)
    assert abs(float(out["loss"]) - want["loss"]) < 1e-12
    assert abs(float(out["margin"]) - want["margin"]) < 1e-12
    assert float(out["accuracy"]) == pytest.approx(want["accuracy"])
    torch.testing.assert_close(out["chosen_rewards"], beta * (t[0] - t[2]))
    torch.testing.assert_close(out["rejected_rewards"], beta * (t[1] - t[3]))


def test_dpo_loss_without_pairs_is_zero_and_keeps_the_graph():
    x = torch.tensor(CHOSEN, requires_grad=True)
    out = dpo_loss(x, x * 2, x.detach(), x.detach(), 0.1, torch.zeros(3, dtype=torch.bool))
    assert float(out["loss"]) == 0.0
    out["loss"].backward()
    assert torch.equal(x.grad, torch.zeros(3))


def test_pairs_take_the_best_and_the_worst_and_skip_equal_groups():
    rewards = [0.1, 1.1, 0.0, 0.6,   # best row 1, worst row 2
               0.5, 0.5, 0.5, 0.5,   # all equal: no preference
               1.1, 0.0, 1.1, 0.0]   # ties: the first of equals (rows 8 and 9)
    pairs = preference_pairs(rewards, 4)
    assert [(p.chosen, p.rejected, p.valid) for p in pairs] == [(1, 2, True), (4, 4, False), (8, 9, True)]
    assert (pairs[0].chosen_reward, pairs[0].rejected_reward) == (1.1, 0.0)
    gold = preference_pairs(rewards, 4, gold_rewards=[1.1, 0.5, 1.1])
    assert [(p.chosen, p.rejected, p.valid) for p in gold] == [(GOLD, 2, True), (GOLD, 4, False), (GOLD, 9, True)]
    with pytest.raises(ValueError, match="not groups of 4"):
        preference_pairs([0.0] * 6, 4)


def test_preference_settings_are_validated_naming_the_field():
    assert isinstance(Stage(name="dpo", ratios={"mer": 1}, objective="preference").objective, Preference)
    bad = [({"group_size": 1}, r"Preference: group_size=1, expected an int >= 2"),
           ({"beta": 0.0}, r"Preference: beta=0.0, expected a finite float > 0"),
           ({"top_p": 0}, r"Preference: top_p=0, expected a float in \(0, 1\]"),
           ({"reference": "sft"}, r"Preference: reference='sft', expected 'base' or 'stage_start'"),
           ({"gold_chosen": "yes"}, r"Preference: gold_chosen='yes', expected true or false")]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            Preference(**settings)
    with pytest.raises(ValueError, match=r"Stage 'dpo': Preference.max_new_tokens names task\(s\) \['eri'\]"):
        Stage(name="dpo", ratios={"mer": 1}, objective=Preference(max_new_tokens={"eri": 4}))
    with pytest.raises(ValueError, match=r"Stage 'dpo' \(objective: preference\): ratios names task\(s\) \['mer'\] "
                                         "the model does not have"):
        EmoVerseModule("tiny", tasks=["msa"], curriculum=Curriculum([Stage(name="dpo", ratios={"mer": 1},
                                                                           objective="preference")]))


# the step on the tiny backbone -------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_amt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preference_amt")
    make_demo_amt(path, seed=0, num_monologues=40, num_dialogues=10, num_frames=2)
    return path


def varied_rewards(module: EmoVerseModule) -> None:
    """The random model's answers mostly tie on the real rewards; a reward that varies within groups."""
    for task in module.tasks.values():
        task.reward_breakdown = lambda text, record: {"correct": float(len(text) % 5)}


def group_batch(amt: Path, module: EmoVerseModule, stage: Stage) -> GroupBatch:
    data = AMTDataModule(str(amt), batch_size=2, num_frames=2, processor=module.processor, tasks=module.tasks,
                         curriculum=Curriculum([stage]))
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_preference_step_on_the_tiny_backbone(small_amt: Path):
    """Fresh LoRA (B = 0) is the reference: every implicit reward is 0 and each pair's loss log 2; one step
    along the gradient makes the chosen answers likelier than the rejected ones (the margin grows)."""
    torch.manual_seed(0)
    module = EmoVerseModule("tiny", lora_dropout=0.1)
    objective = Preference(group_size=4, beta=0.5, max_new_tokens={"fer": 6, "eri": 6})
    batch = group_batch(small_amt, module, Stage(name="dpo", ratios={"fer": 1, "eri": 1}, objective=objective))
    varied_rewards(module)
    module.train()
    out = objective.step(module.backbone, batch, module.tasks)
    valid = torch.tensor([p.valid for p in out["pairs"]])
    assert len(out["pairs"]) == 2 and valid.any()
    assert all(out["samples"].rewards[p.chosen] > out["samples"].rewards[p.rejected] for p in out["pairs"] if p.valid)
    assert out["chosen_rewards"].abs().max() == 0 and out["rejected_rewards"].abs().max() == 0
    assert float(out["loss"]) == pytest.approx(math.log(2))
    assert module.backbone.training and all(m.training for m in module.modules() if isinstance(m, torch.nn.Dropout))
    out["loss"].backward()
    lora = [p for n, p in module.named_parameters() if "lora_B" in n]
    assert sum(float(p.grad.abs().sum()) for p in lora) > 0
    # the same pairs scored after a small step along the gradient (the adapters only): chosen answers gain
    pairs, answers, _ = objective.make_pairs(module.backbone, batch, module.tasks)
    before = objective.score(module.backbone, batch, pairs, answers)
    module.zero_grad()
    before["loss"].backward()
    with torch.no_grad():
        for p in lora:
            p -= 1e-2 * p.grad
    after = objective.score(module.backbone, batch, pairs, answers)
    assert float(after["margin"]) > float(before["margin"]) == 0.0
    assert float(after["loss"]) < float(before["loss"])
    assert float(after["accuracy"]) > 0


def test_gold_answers_can_be_chosen(small_amt: Path):
    torch.manual_seed(0)
    module = EmoVerseModule("tiny", tasks=["mer", "msa"])
    objective = Preference(group_size=2, gold_chosen=True, max_new_tokens={"mer": 4, "msa": 4})
    batch = group_batch(small_amt, module, Stage(name="dpo", ratios={"mer": 1, "msa": 1}, objective=objective))
    assert batch.responses[0] and batch.responses[0] == batch.responses[1]  # the gold answer of the group's prompt
    out = objective.step(module.backbone, batch, module.tasks)
    assert all(p.chosen == GOLD for p in out["pairs"])
    gold = [module.tasks[t].reward(r, rec) for t, r, rec in zip(batch.tasks[::2], batch.responses[::2],
                                                                    batch.records[::2])]
    assert [p.chosen_reward for p in out["pairs"]] == gold and all(g > 1 for g in gold)  # a gold answer scores
    assert all(p.valid == (p.chosen_reward > p.rejected_reward) for p in out["pairs"])


# fit and resume ----------------------------------------------------------------------------------

def stages() -> list[Stage]:
    return [
        Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=24, epochs=1, samples_per_epoch=2 * BATCH),
        Stage(name="prefer", ratios={"fer": 1, "eri": 1}, epochs=1, samples_per_epoch=3 * BATCH, train=["lora"],
              lr=5e-3, schedule="stage",
              objective=Preference(group_size=3, beta=0.5, max_new_tokens={"fer": 5, "eri": 5}, reference="stage_start")),
    ]


def test_fit_with_a_preference_stage_resumes_exactly_mid_stage(small_amt: Path, tmp_path: Path):
    keys = ("train/preference/reward_margin", "train/preference/accuracy", "train/loss")
    metrics = check_exact_resume(small_amt, tmp_path, stages, stop=3, keys=keys, prepare=varied_rewards)
    assert len(metrics) == 5  # one step into the preference stage is where it stopped
    assert {"train/preference/pairs", "train/preference/skipped", "train/preference/reward_margin",
            "train/preference/chosen_reward", "train/preference/rejected_reward", "train/preference/accuracy",
            "train/fer/reward", "train/fer/reward/correct"} <= set(metrics[-1])
    # the reference is the stage's start: at its first step every implicit reward is 0
    assert metrics[2]["train/preference/reward_margin"] == 0.0
    assert metrics[-1]["train/preference/reward_margin"] != 0.0
