"""Each prompt once: group rollouts from one prefill (`Backbone.sample_groups`) sample the repeated prompts' answers,
and shared-prompt rows (`objectives.shared_rows`), one row per group `[prompt; answer_1; ...; answer_G]`, give the
repeated `[prompt; answer]` rows' log-probabilities, GRPO and preference losses and gradients on every tiny preset
that packs; a backbone that cannot share says why in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from emoverse.backbones.base import Sampling
from emoverse.objectives.grpo import grpo_loss
from emoverse.objectives.preference import Pair, Preference
from emoverse.objectives.sampling import GroupCollator, answer_inputs, token_logprobs
from emoverse.objectives.shared_rows import shared_logprobs, shared_rows, sharing_unsupported
from tests.test_audio_backbones import audio_examples
from tests.test_backbones import TINY, with_lora
from tests.test_packing import CAN_PACK, CANNOT_PACK, MROPE, demo_examples

# Measured (CPU, float32, sdpa): per-token log-probabilities of shared rows agree with the repeated rows' to <= 1e-6
# relative and gradients to well under 1e-5 of each tensor's largest entry on every preset that packs.
RTOL = 1e-5
CANNOT_SHARE = {**CANNOT_PACK, "tiny_gemma3n": "sliding-window", "tiny_paligemma": "token_type_ids"}
"""The presets that score repeated rows, with what their one-line reason names."""
CAN_SHARE = CAN_PACK - set(CANNOT_SHARE)


def answers_for(proc, prompts: int, group: int) -> list[list[int]]:
    """Answers of different lengths (one token up to several), some ending with a stop token."""
    words = ["joy", "neutral sadness", "anger, fear and surprise in the scene", "{\"label\": \"happy\"}", "no"]
    out = []
    for k in range(prompts * group):
        ids = proc.tokenizer.encode(words[k % len(words)], add_special_tokens=False)[: 1 + k % 6]
        if k % 3 == 0:
            ids = [*ids, proc.stop_ids[0]]
        out.append(ids)
    return out


def per_answer(logp: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each answer's token log-probabilities, in order (whatever the layout of its row)."""
    return [row[m] for row, m in zip(logp, mask.bool(), strict=True)]


def _grads(backbone) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in backbone.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", TINY)
def test_shared_rows_equal_repeated_rows_in_logprobs_loss_and_gradients(demo_amt: Path, name: str) -> None:
    backbone = with_lora(name)
    backbone.eval()
    proc = backbone.processor
    reason = sharing_unsupported(backbone)
    if name not in CAN_SHARE:
        assert reason and "\n" not in reason and len(reason) < 250 and CANNOT_SHARE[name] in reason, reason
        return
    assert reason is None
    group = 3
    examples = demo_examples(demo_amt, proc)[:3]
    batch = GroupCollator(proc, group)(examples)
    answers = answers_for(proc, len(examples), group)
    inputs, labels = answer_inputs(backbone, batch.inputs, answers)
    rows = shared_rows(backbone, batch.once, [answers[g:g + group] for g in range(0, len(answers), group)])
    assert rows.inputs["input_ids"].shape[0] == len(examples)
    advantages = torch.linspace(-1.0, 1.0, len(answers))

    def loss_and_grads(score):
        backbone.zero_grad(set_to_none=True)
        with torch.no_grad():
            ref, _ = score()
        logp, mask = score()
        loss = grpo_loss(logp, logp.detach(), ref - 0.1, advantages, mask, 0.2, 0.04)["loss"]
        loss.backward()
        return logp.detach(), mask, loss.detach(), _grads(backbone)

    want_lp, want_mask, want_loss, want_grads = loss_and_grads(lambda: token_logprobs(backbone, inputs, labels, 0.7))
    got_lp, got_mask, got_loss, got_grads = loss_and_grads(lambda: shared_logprobs(backbone, rows, 0.7))
    assert [int(m.sum()) for m in got_mask] == [len(a) for a in answers]
    for got, want in zip(per_answer(got_lp, got_mask), per_answer(want_lp, want_mask), strict=True):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(got_loss, want_loss, rtol=RTOL, atol=1e-7)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for key in want_grads:
        scale = want_grads[key].abs().max().clamp(min=1e-12)
        assert (got_grads[key] - want_grads[key]).abs().max() <= RTOL * scale + 1e-9, key


GROUP_SAMPLING_REFUSED = {**dict.fromkeys(MROPE, "rope_deltas"), "tiny_paligemma": "bidirectional"}
"""The presets that sample from repeated prompts (M-RoPE offsets stay per prompt after the prefill; PaliGemma's prompt
attends both ways), with what their one-line reason names."""


@pytest.mark.parametrize("name", TINY)
def test_each_prompt_prefilled_once_samples_the_repeated_prompts_answers(demo_amt: Path, name: str) -> None:
    """Same seed, same answers: the first step too draws from `[prompts x G, vocab]` probabilities, so checkpoints'
    RNG state gives the same rollouts as before, and a resumed stage the same as an uninterrupted one."""
    backbone = with_lora(name)
    backbone.eval()
    reason = backbone.group_sampling_unsupported()
    if name in GROUP_SAMPLING_REFUSED:
        assert reason and "\n" not in reason and GROUP_SAMPLING_REFUSED[name] in reason, reason
        return
    assert reason is None
    batch = GroupCollator(backbone.processor, 4)(demo_examples(demo_amt, backbone.processor)[:3])
    sampling = Sampling(temperature=1.3, top_p=0.9)
    with torch.no_grad():
        torch.manual_seed(7)
        want = backbone.generate_ids(batch.inputs, 8, sampling)
        after_want = torch.rand(3)
        torch.manual_seed(7)
        got = backbone.sample_groups(batch.once, 4, 8, sampling)
        after_got = torch.rand(3)
    assert torch.equal(got, want)
    assert torch.equal(after_got, after_want)  # the same random numbers drawn
    assert len({tuple(r) for r in got.tolist()}) > 3  # the copies of a prompt sample different answers


@pytest.mark.parametrize("name", sorted(CAN_SHARE))
def test_a_preference_pair_in_one_shared_row_equals_its_two_rows(demo_amt: Path, name: str) -> None:
    backbone = with_lora(name)
    backbone.eval()
    proc = backbone.processor
    batch = GroupCollator(proc, 3)(demo_examples(demo_amt, proc)[:3])
    sampled = answers_for(proc, 3, 3)
    pairs = [Pair(k, k + 2, 1.0, 0.0, True) for k in range(0, 9, 3)]
    answers: list[list[int]] = [[] for _ in range(9)]
    for k in range(0, 9, 3):
        answers[k], answers[k + 1] = sampled[k], sampled[k + 2]

    def loss_and_grads(share: bool):
        backbone.zero_grad(set_to_none=True)
        out = Preference(group_size=3, share_prompts=share).score(backbone, batch, pairs, answers)
        out["loss"].backward()
        return {k: v.detach() for k, v in out.items()}, _grads(backbone)

    with torch.no_grad():  # LoRA away from zero, so the policy differs from the reference (adapters disabled)
        for n, p in backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    want, want_grads = loss_and_grads(False)
    got, got_grads = loss_and_grads(True)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=RTOL, atol=1e-6, msg=key)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for key in want_grads:
        scale = want_grads[key].abs().max().clamp(min=1e-12)
        assert (got_grads[key] - want_grads[key]).abs().max() <= RTOL * scale + 1e-9, key


AUDIO_ONLY = "tiny_qwen2_audio"
"""The audio-only tiny preset (not in `TINY`, whose examples carry frames): it shares and samples from one prefill."""


@pytest.mark.parametrize("check", ["scoring", "sampling", "preference"])
def test_the_audio_only_backbone_shares_too(check: str, monkeypatch) -> None:
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "demo_examples", lambda _amt, _proc: audio_examples(AUDIO_ONLY, (0.5, 1.0, 0.7)))
    monkeypatch.setattr(module, "CAN_SHARE", CAN_SHARE | {AUDIO_ONLY})
    {"scoring": test_shared_rows_equal_repeated_rows_in_logprobs_loss_and_gradients,
     "sampling": test_each_prompt_prefilled_once_samples_the_repeated_prompts_answers,
     "preference": test_a_preference_pair_in_one_shared_row_equals_its_two_rows}[check](Path("."), AUDIO_ONLY)
