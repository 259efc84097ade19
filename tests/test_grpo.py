"""GRPO: the loss, advantages and KL estimator against an independent computation; the settings'
validation; the step on the tiny backbone (KL zero at the reference, the policy-gradient sign);
a fit with a GRPO stage stopped and resumed mid-stage equals the uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from emoverse import AMTDataModule, EmoVerseModule, Stage
from emoverse.backbones.base import Sampling
from emoverse.curriculum import Curriculum, MultiStageCurriculum
from emoverse.data import GroupBatch, make_demo_amt
from emoverse.objectives import GRPO, SFT
from emoverse.objectives.grpo import group_advantages, grpo_loss, grpo_step, kl_estimate
from emoverse.objectives.sampling import (
    answer_inputs,
    check_sampling_stage,
    cut_answers,
    reference_policy,
    token_logprobs,
)
from tests.stop_and_resume import BATCH, check_exact_resume

# a fixed tiny batch: 2 prompts x G=3 answers of up to 4 tokens
G = 3
LOGP = [[-1.0, -0.5, -2.0, 0.0], [-0.3, -0.2, 0.0, 0.0], [-1.5, -1.0, -0.7, -0.1],
        [-0.9, -2.2, 0.0, 0.0], [-0.4, -0.6, -0.8, 0.0], [-1.1, -0.05, -0.3, -0.6]]
OLD = [[-1.1, -0.4, -1.6, 0.0], [-0.3, -0.5, 0.0, 0.0], [-1.0, -1.3, -0.7, -0.2],
       [-0.9, -1.9, 0.0, 0.0], [-0.6, -0.6, -0.5, 0.0], [-1.4, -0.05, -0.35, -0.2]]
REF = [[-1.2, -0.7, -1.8, 0.0], [-0.1, -0.3, 0.0, 0.0], [-1.5, -0.8, -0.9, -0.3],
       [-1.0, -2.0, 0.0, 0.0], [-0.5, -0.4, -0.9, 0.0], [-1.0, -0.1, -0.3, -0.9]]
MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
REWARDS = [1.1, 0.1, 0.0, 0.6, 1.1, 0.35]


def independent_advantages(rewards: list[float], group: int) -> list[float]:
    out = []
    for g in range(0, len(rewards), group):
        grp = rewards[g:g + group]
        mean = sum(grp) / group
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (group - 1))
        out += [(r - mean) / (std + 1e-4) for r in grp]
    return out


def independent_kl(logp: float, ref: float) -> float:
    ratio = math.exp(ref) / math.exp(logp)
    return ratio - math.log(ratio) - 1


def independent_loss(eps: float, beta: float, old: list[list[float]] = OLD) -> tuple[float, float]:
    adv = independent_advantages(REWARDS, G)
    total, kl_sum, tokens = 0.0, 0.0, 0
    for i, row in enumerate(LOGP):
        s, n = 0.0, 0
        for t, lp in enumerate(row):
            if not MASK[i][t]:
                continue
            rho = math.exp(lp - old[i][t])
            surrogate = min(rho * adv[i], min(max(rho, 1 - eps), 1 + eps) * adv[i])
            kl = independent_kl(lp, REF[i][t])
            s, n = s + surrogate - beta * kl, n + 1
            kl_sum, tokens = kl_sum + kl, tokens + 1
        total += s / n
    return -total / len(LOGP), kl_sum / tokens


def tensors() -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(x, dtype=torch.float64) for x in (LOGP, OLD, REF, MASK, REWARDS))


def test_advantages_equal_an_independent_computation():
    *_, rewards = tensors()
    torch.testing.assert_close(group_advantages(rewards, G), torch.tensor(independent_advantages(REWARDS, G),
                                                                          dtype=torch.float64), atol=1e-6, rtol=0)
    assert group_advantages(torch.ones(4), 2).abs().max() == 0  # equal rewards: no signal
    with pytest.raises(ValueError, match="not groups of 4"):
        group_advantages(torch.ones(6), 4)


def test_kl_estimator_equals_an_independent_computation_and_is_zero_at_the_reference():
    logp, _, ref, *_ = tensors()
    want = torch.tensor([[independent_kl(a, b) for a, b in zip(r1, r2)] for r1, r2 in zip(LOGP, REF)], dtype=torch.float64)
    torch.testing.assert_close(kl_estimate(logp, ref), want, atol=1e-6, rtol=0)
    assert kl_estimate(logp, logp).abs().max() == 0
    assert (kl_estimate(logp, ref) >= 0).all()


@pytest.mark.parametrize(("eps", "beta"), [(0.2, 0.04), (0.1, 0.5), (10.0, 0.0)])
def test_grpo_loss_equals_an_independent_computation(eps: float, beta: float):
    logp, old, ref, mask, rewards = tensors()
    out = grpo_loss(logp, old, ref, group_advantages(rewards, G), mask, eps, beta)
    want_loss, want_kl = independent_loss(eps, beta)
    assert abs(float(out["loss"]) - want_loss) < 1e-6
    assert abs(float(out["kl"]) - want_kl) < 1e-6
    assert (float(out["clipped"]) > 0) == (eps < 1)  # some ratios of the fixed batch leave [0.8, 1.2]


def test_grpo_gradient_at_one_update_per_batch():
    """μ = 1 (old = θ): d(-J)/d log π_{i,t} = -(A_i - β (1 - π_ref/π_θ)) / (N |o_i|): positive advantages push
    their tokens up, and at the reference the KL term adds nothing."""
    logp, _, ref, mask, rewards = tensors()
    adv = group_advantages(rewards, G)
    for reference in (ref, logp.clone()):
        x = logp.clone().requires_grad_(True)
        grpo_loss(x, x.detach(), reference, adv, mask, 0.2, 0.04)["loss"].backward()
        lengths = mask.sum(1, keepdim=True)
        want = -(adv[:, None] - 0.04 * (1 - torch.exp(reference - logp))) / (len(LOGP) * lengths) * mask
        torch.testing.assert_close(x.grad, want, atol=1e-9, rtol=0)
    assert ((x.grad * mask).sum(1).sign() == -adv.sign()).all()


def test_cut_answers_stop_at_the_first_stop_token_within_the_budget():
    ids = torch.tensor([[5, 6, 1, 7], [5, 6, 7, 8], [1, 0, 0, 0]])
    assert cut_answers(ids, [4, 2, 4], [1]) == [[5, 6, 1], [5, 6], [1]]


# settings ----------------------------------------------------------------------------------------

def test_grpo_settings_are_validated_naming_the_field():
    stage = Stage(name="rl", ratios={"mer": 1}, objective="grpo")
    assert isinstance(stage.objective, GRPO) and stage.objective.group_size == 4  # the short form: the defaults
    assert isinstance(Stage(name="sft", ratios={"mer": 1}).objective, SFT)  # omitted: supervised
    assert Stage(name="rl", ratios={"mer": 1}, objective=GRPO(group_size=8)).objective.group_size == 8
    bad = [({"group_size": 1}, r"GRPO: group_size=1, expected an int >= 2"),
           ({"beta": -0.1}, r"GRPO: beta=-0.1, expected a finite float >= 0"),
           ({"clip_eps": 0}, r"GRPO: clip_eps=0, expected a finite float > 0"),
           ({"temperature": 0.0}, r"GRPO: temperature=0.0"),
           ({"top_p": 1.5}, r"GRPO: top_p=1.5, expected a float in \(0, 1\]"),
           ({"max_new_tokens": {"mer": 0}}, r"GRPO: max_new_tokens\['mer'\]=0"),
           ({"reference": "sft"}, r"GRPO: reference='sft', expected 'base' or 'stage_start'")]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            GRPO(**settings)
    with pytest.raises(ValueError, match=r"Stage 'rl': GRPO.max_new_tokens names task\(s\) \['eri'\] the stage does not draw"):
        Stage(name="rl", ratios={"mer": 1}, objective=GRPO(max_new_tokens={"eri": 8}))
    with pytest.raises(ValueError, match=r"Stage 'x': objective='ppo', expected an Objective .* or one of \['grpo', 'preference', 'sft'\]"):
        Stage(name="x", ratios={"mer": 1}, objective="ppo")


def test_a_grpo_stage_refuses_tasks_without_reward_and_backbones_that_cannot_sample(tiny_module):
    stage = Stage(name="rl", ratios={"mer": 1}, objective="grpo")

    class NoReward:
        has_reward = False

    with pytest.raises(ValueError, match=r"Stage 'rl' \(objective: grpo\): ratios names task\(s\) \['mer'\] without a reward"):
        check_sampling_stage(stage, {"mer": NoReward()}, tiny_module.backbone, "grpo")

    class Mute:
        can_sample = False

    with pytest.raises(ValueError, match=r"Stage 'rl' \(objective: grpo\): backbone Mute cannot generate"):
        check_sampling_stage(stage, tiny_module.tasks, Mute(), "grpo")
    with pytest.raises(ValueError, match=r"ratios names task\(s\) \['mer'\] the model does not have"):
        EmoVerseModule("tiny", tasks=["msa"], curriculum=Curriculum([stage]))


# the step on the tiny backbone -------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_amt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grpo_amt")
    make_demo_amt(path, seed=0, num_monologues=40, num_dialogues=10, num_frames=2)
    return path


def group_batch(amt: Path, module: EmoVerseModule, stage: Stage) -> GroupBatch:
    data = AMTDataModule(str(amt), batch_size=2, num_frames=2, processor=module.processor, tasks=module.tasks,
                         curriculum=Curriculum([stage]))
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_group_batches_repeat_each_prompt_with_its_record(small_amt: Path, tiny_module: EmoVerseModule):
    stage = Stage(name="rl", ratios={"msa": 1, "fer": 1}, objective=GRPO(group_size=3))
    batch = group_batch(small_amt, tiny_module, stage)
    assert isinstance(batch, GroupBatch) and batch.group_size == 3 and batch.prompts == 2
    assert len(batch.ids) == 6 and batch.ids[:3] == [batch.ids[0]] * 3 and batch.ids[3] != batch.ids[2]
    assert [r.id for r in batch.records] == batch.ids
    assert batch.draws == list(zip(batch.ids[::3], batch.tasks[::3]))
    ids = batch.inputs["input_ids"]
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[0], ids[2])


@pytest.mark.parametrize("name", ["tiny", "tiny_llava", "tiny_qwen2_vl"])
def test_sampling_is_batched_seeded_and_runs_a_grpo_step_on_every_family(small_amt: Path, name: str):
    """The sampling path of the backbone contract on a composed and two transformers-native families
    (Qwen2-VL: flattened patches and M-RoPE): the global seed fixes the samples; a GRPO step runs."""
    torch.manual_seed(0)
    module = EmoVerseModule(name, tasks=["mer", "msa"])
    stage = Stage(name="rl", ratios={"mer": 1, "msa": 1}, objective=GRPO(group_size=2))
    batch = group_batch(small_amt, module, stage)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(module.backbone.generate_ids(batch.inputs, 5, Sampling(2.0, 0.95)))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape[0] == 4 and runs[0].shape[1] <= 5
    # no image placeholder or chat marker is ever sampled (it would be read as one in the training forward)
    forbidden = set(module.processor.unsampled_ids)
    assert module.processor.image_token_id in forbidden if name == "tiny" else forbidden
    assert not forbidden & set(runs[0].flatten().tolist()) - {module.processor.pad_id}
    out = grpo_step(module.backbone, batch, module.tasks, stage.objective)
    assert torch.isfinite(out["loss"]) and float(out["kl"]) == 0.0  # fresh LoRA: the policy is the reference


def test_grpo_step_on_the_tiny_backbone(small_amt: Path):
    """Fresh LoRA (B = 0) is the reference: KL is exactly 0; the loss has gradients on the adapters, and a
    small step along them raises the log-probability of the answers with positive advantage."""
    torch.manual_seed(0)
    module = EmoVerseModule("tiny", lora_dropout=0.1)
    stage = Stage(name="rl", ratios={"fer": 1, "eri": 1}, objective=GRPO(group_size=4, max_new_tokens={"fer": 6, "eri": 6}))
    batch = group_batch(small_amt, module, stage)
    # the random model's answers mostly tie on the real rewards; a reward that varies within groups
    for task in module.tasks.values():
        task.reward_breakdown = lambda text, record: {"correct": float(len(text) % 5)}
    module.train()
    out = grpo_step(module.backbone, batch, module.tasks, stage.objective)
    assert out["advantages"].abs().sum() > 0
    assert float(out["kl"]) == 0.0
    assert len(out["samples"].rewards) == 8 and all(r >= 0 for r in out["samples"].rewards)
    assert all(1 <= n <= 6 for n in out["samples"].lengths)
    assert module.backbone.training and all(m.training for m in module.modules() if isinstance(m, torch.nn.Dropout))
    out["loss"].backward()
    lora = [p for n, p in module.named_parameters() if "lora_B" in n]
    assert sum(float(p.grad.abs().sum()) for p in lora) > 0

    # the policy-gradient sign, on answers sampled once with constructed advantages +1 / -1
    module.zero_grad()
    torch.manual_seed(1)
    with torch.no_grad():
        new = module.backbone.generate_ids(batch.inputs, 6, Sampling(1.0, 1.0))
    answers = cut_answers(new, [6] * 8, module.processor.stop_ids)
    inputs, labels = answer_inputs(module.backbone, batch.inputs, answers)
    adv = torch.tensor([1.0, -1.0] * 4)

    def surrogate() -> torch.Tensor:
        logp, mask = token_logprobs(module.backbone, inputs, labels, 1.0)
        return (adv * (logp * mask).sum(1) / mask.sum(1)).mean()

    module.eval()
    before = surrogate()
    logp, mask = token_logprobs(module.backbone, inputs, labels, 1.0)
    grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, clip_eps=0.2, beta=0.0)["loss"].backward()
    with torch.no_grad():
        for p in lora:  # the adapters only, so that disabling them still gives the reference
            p -= 1e-2 * p.grad
        after = surrogate()
        with reference_policy(module.backbone):
            at_reference = surrogate()
    assert after > before
    torch.testing.assert_close(at_reference, before)  # disabling the adapters gives the reference back


# fit and resume ----------------------------------------------------------------------------------

def stages(train: tuple[str, ...] = ("lora",)) -> list[Stage]:
    return [
        Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=24, epochs=1, samples_per_epoch=2 * BATCH),
        Stage(name="reinforce", ratios={"msa": 1, "mer": 1}, epochs=1, samples_per_epoch=3 * BATCH, train=list(train),
              lr=5e-4, schedule="stage",
              objective=GRPO(group_size=2, max_new_tokens={"msa": 4, "mer": 4}, reference="stage_start")),
    ]


def test_fit_with_a_grpo_stage_resumes_exactly_mid_stage(small_amt: Path, tmp_path: Path):
    metrics = check_exact_resume(small_amt, tmp_path, stages, stop=3, keys=("train/grpo/reward",))  # 1 step into GRPO
    assert len(metrics) == 5
    assert {"train/grpo/reward", "train/grpo/kl", "train/grpo/reward_std", "train/grpo/answer_length",
            "train/grpo/unparsed"} <= set(metrics[-1])
    # the reference is the stage's start (after the SFT stage moved the adapters), kept in the checkpoint
    assert metrics[2]["train/grpo/kl"] == 0.0
    assert metrics[-1]["train/grpo/kl"] > 0


# two ranks ---------------------------------------------------------------------------------------

class _RankLog(pl.Callback):
    """Each rank's prompts of the GRPO stage and a digest of its final trainable weights, as JSON."""

    def __init__(self, out: Path) -> None:
        self.out, self.prompts = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if isinstance(batch, GroupBatch):
            group = batch.group_size
            assert all(batch.ids[k] == batch.ids[k - k % group] for k in range(len(batch.ids)))
            self.prompts += [f"{i}/{t}" for i, t in batch.draws]

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        digest = {k: float(v.double().sum()) for k, v in pl_module.trainable_state_dict().items()}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"prompts": self.prompts,
                                                                              "weights": digest}))


@pytest.mark.slow
def test_two_ranks_sample_their_own_prompts_and_stay_in_sync(small_amt: Path, tmp_path: Path):
    import json

    # the same parts train in both stages: DDP's reducer expects gradients for what trained at its start
    curriculum = Curriculum(stages(train=("projector", "lora")))
    module = EmoVerseModule("tiny", lora_dropout=0.1, lr=1e-3, curriculum=curriculum)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=curriculum.total_epochs,
                         reload_dataloaders_every_n_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         default_root_dir=tmp_path, callbacks=[MultiStageCurriculum(curriculum), _RankLog(tmp_path)])
    trainer.fit(module, AMTDataModule(str(small_amt), batch_size=BATCH, num_frames=2, processor=module.processor,
                                      tasks=module.tasks, curriculum=curriculum))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["prompts"]) == len(ranks[1]["prompts"]) > 0
    assert not set(ranks[0]["prompts"]) & set(ranks[1]["prompts"])  # each rank its own prompts
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-6)  # one model, gradients reduced


def test_a_stage_with_a_schedule_of_its_own():
    """`Stage(schedule="stage")`: a warm-up + cosine over the stage's own steps, from its lr; the other stages
    keep the run's curve (a GRPO stage placed last would otherwise get the tail of the run's cosine)."""
    from emoverse.schedule import StageSchedule

    run = StageSchedule(100, 0.1, [40, 40, 20], [1.0, 1.0, 0.5])
    own = StageSchedule(100, 0.1, [40, 40, 20], [1.0, 1.0, 0.5], [None, None, (80, 100)])
    assert [own(s) for s in range(80)] == [run(s) for s in range(80)]
    assert run(85) < 0.5 * 0.1  # the tail of the run's curve: under a tenth of the stage lr
    assert own(80) == 0.0 and own(82) == pytest.approx(0.5)  # 2 warm-up steps, then the stage's own peak
    assert own(99) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 17 / 18)))
    with pytest.raises(ValueError, match="schedule='own', expected 'run' or 'stage'"):
        Stage(name="x", ratios={"mer": 1}, schedule="own")
