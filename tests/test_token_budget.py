"""Token-budget batches without a model: TokenBudget, plan_batches, split_for_ranks, the curriculum's batches and
the loader's resume; synthetic lengths stand in for the processor's."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from emoverse.curriculum import Curriculum, Stage, TokenBudget, TokenBudgetSampler
from emoverse.curriculum._plan import rng
from emoverse.curriculum.batching import plan_batches, split_for_ranks
from emoverse.data.demo import amt_label_sets

RECORDS = amt_label_sets(3000, 0)
STAGES = [
    Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=800, epochs=2),
    Stage(name="reasoning", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, budget="remaining", epochs=1),
]
TASK_BASE = {"msa": 60, "mer": 70, "fer": 40, "eri": 90, "ecpe": 300}


def fake_length(record: int, task: str) -> int:
    """Deterministic lengths shaped like the demo's: a per-task base plus a per-record spread."""
    return TASK_BASE[task] + (record * 37) % 97


def bound(budget: TokenBudget, num_replicas: int = 1, seed: int = 5) -> Curriculum:
    c = Curriculum(STAGES, seed=seed)
    c.bind(RECORDS, num_replicas, budget=budget, lengths=fake_length)
    return c


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": 0}, "max_tokens=0"), ({"max_tokens": True}, "max_tokens=True"), ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_tokens": 512, "window": 0}, "window=0"), ({"max_tokens": 512, "packing": "yes"}, "packing='yes'"),
    ({"max_tokens": 512, "lookahead": -1}, r"lookahead=-1; expected an int >= 0"),
    ({"max_tokens": 512, "lookahead": True}, "lookahead=True"),
])
def test_token_budget_validates_its_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenBudget(**kwargs)


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_every_position_once_and_every_batch_within_budget(packing: bool, seed: int):
    gen = np.random.default_rng(seed)
    lengths = gen.integers(20, 700, size=int(gen.integers(1, 900)))
    lookahead = int(gen.choice([0, 1, 8, 64, 500]))
    budget = TokenBudget(max_tokens=int(gen.integers(300, 3000)), packing=packing, window=int(gen.integers(1, 300)),
                         lookahead=lookahead)
    tasks = gen.integers(0, 4, size=len(lengths))
    batches = plan_batches(lengths, budget, rng(seed, 9), tasks=tasks)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    packed = -1  # the latest draw of the rows opened so far
    for b in sorted(batches, key=lambda b: int(b[0])) if packing else batches:  # packed rows in the order they opened
        assert budget.cost(lengths[b]) <= budget.max_tokens or len(b) == 1  # an oversized draw sits alone
        if packing:  # the epoch's order, within the look-ahead: a packed row keeps the draws' mix of tasks
            assert (np.diff(b) > 0).all()
            if lookahead == 0:  # consecutive draws, closed at the first that does not fit
                assert (np.diff(b) == 1).all()
            # a draw is passed over (packed later than a draw behind it) only by draws < lookahead behind it
            assert (packed - b < lookahead).all() or packed < b[0]
            packed = max(packed, int(b[-1]))
        else:
            assert (np.diff(lengths[b]) >= 0).all()  # sorted inside the batch
            # windows: a batch never mixes draws of two windows
            assert len({int(i) // budget.window for i in b}) == 1
    again = plan_batches(lengths, budget, rng(seed, 9), tasks=tasks)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_sorted_windows_pad_less_than_the_shuffled_order():
    gen = np.random.default_rng(0)
    lengths = gen.integers(55, 430, size=2000)
    budget = TokenBudget(max_tokens=1600)
    batches = plan_batches(lengths, budget, rng(0, 1))
    padding = 1 - lengths.sum() / sum(budget.cost(lengths[b]) for b in batches)
    fixed = [lengths[i:i + 8] for i in range(0, 2000, 8)]  # padded batches of 8 in the shuffled order
    assert padding < 0.1 < 1 - lengths.sum() / sum(len(b) * b.max() for b in fixed)


def row_mix_distance(c: Curriculum, epoch: int) -> float:
    """Mean over the epoch's batches of the total-variation distance between a batch's task shares (in draws)
    and the stage's (its quotas): 0 when every batch holds the stage's mix, 1 when none holds a task it should."""
    quotas = c.quotas(c.stage_of(epoch))
    total = sum(quotas.values())
    dist = []
    for b in c.batches(epoch):
        count = Counter(t for _, t in b)
        dist.append(0.5 * sum(abs(count[t] / len(b) - q / total) for t, q in quotas.items()))
    return float(np.mean(dist))


def fill(c: Curriculum, epoch: int) -> float:
    stats = c.batch_stats(epoch)
    return stats["tokens"] / (stats["batches"] * c.budget.max_tokens)


def test_the_look_ahead_fills_packed_rows_and_keeps_their_task_mix():
    # demo-shaped lengths in rows of 2,048 tokens, as the quickstart packs; against rows of consecutive draws
    # (lookahead 0, closed at the first draw that does not fit) on the same draws
    in_order, filled = bound(TokenBudget(2048, packing=True, lookahead=0)), bound(TokenBudget(2048, packing=True))
    for epoch in range(filled.total_epochs):
        assert fill(filled, epoch) >= 0.95, (epoch, fill(in_order, epoch), fill(filled, epoch))
        assert filled.epoch_batches(epoch) <= in_order.epoch_batches(epoch)
        assert Counter(p for b in filled.batches(epoch) for p in b) == Counter(filled.draws(epoch))
        # task shares per row as close to the stage's ratios as consecutive draws' (measured, mean distance per
        # epoch: 0.117 -> 0.107, 0.130 -> 0.112, 0.219 -> 0.184; a row of one task is 0.4-0.9 away); rows fill
        # 96.4 / 96.7 / 93.9 % -> 98.9 / 99.1 / 98.4 %
        assert row_mix_distance(filled, epoch) <= row_mix_distance(in_order, epoch) + 0.02
    assert min(fill(in_order, e) for e in range(in_order.total_epochs)) < 0.95  # what the look-ahead is for
    assert bound(TokenBudget(2048, packing=True)).batches(2) == filled.batches(2)  # a function of the draws


def test_split_for_ranks_halves_batches_and_repeats_only_single_rows():
    batches = [np.arange(5), np.arange(5, 7), np.arange(7, 8)]
    out, repeated = split_for_ranks(batches, 2)
    assert (len(out), repeated) == (4, 0)
    assert sorted(np.concatenate(out).tolist()) == list(range(8))
    singles, repeated = split_for_ranks([np.array([0]), np.array([1]), np.array([2])], 2)
    assert (len(singles), repeated) == (4, 1) and singles[-1].tolist() == [0]


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_draw_of_the_epoch_in_exactly_one_batch_with_exact_quotas(ranks: int, packing: bool):
    budget = TokenBudget(max_tokens=1500, packing=packing, window=128)
    c, plain = bound(budget, ranks), Curriculum(STAGES, seed=5)
    plain.bind(RECORDS)
    for epoch in range(c.total_epochs):
        per_rank = [c.batches(epoch, r) for r in range(ranks)]
        assert {len(b) for b in per_rank} == {c.epoch_batches(epoch)}  # DDP: every rank takes as many steps
        together = Counter(p for batches in per_rank for b in batches for p in b)
        assert together == Counter(plain.draws(epoch))  # every draw exactly once: no loss, no repeat
        stage = c.stage_of(epoch)
        assert Counter(t for _, t in together.elements()) == Counter(c.quotas(stage))
        stats = c.batch_stats(epoch)
        assert stats["draws"] == sum(together.values()) and stats["repeated"] == 0
        assert stats["tokens"] == sum(fake_length(r, t) for r, t in together.elements())
        assert stats["tokens"] <= stats["positions"] <= stats["batches"] * budget.max_tokens
    assert c.optimizer_steps(1) == [c.epoch_batches(e) for e in range(c.total_epochs)]
    assert c.optimizer_steps(4) == [-(-c.epoch_batches(e) // 4) for e in range(c.total_epochs)]
    assert c.loader_lengths() == [c.epoch_batches(e) for e in range(c.total_epochs)]


@pytest.mark.parametrize("packing", [False, True])
def test_same_seed_same_batches_other_seed_others(packing: bool):
    budget = TokenBudget(max_tokens=1200, packing=packing)
    a, b, other = bound(budget), bound(budget), bound(budget, seed=6)
    assert a.batches(1) == b.batches(1)  # computed without replaying epoch 0
    assert a.batches(0) != a.batches(1) and a.batches(0) != other.batches(0)


def test_lengths_are_measured_once_per_pair():
    calls: Counter[tuple[int, str]] = Counter()

    def counting(record: int, task: str) -> int:
        calls[(record, task)] += 1
        return fake_length(record, task)

    c = Curriculum(STAGES, seed=5)
    c.bind(RECORDS, budget=TokenBudget(max_tokens=1000), lengths=counting)
    c.optimizer_steps()
    c.batches(0)
    assert calls and max(calls.values()) == 1


def test_an_example_longer_than_max_tokens_trains_alone_and_is_counted():
    budget = TokenBudget(max_tokens=350)  # ecpe rows are 300-396 tokens
    c = bound(budget)
    with pytest.warns(UserWarning, match=r"longer than max_tokens=350 \(longest \d+ tokens\); each trains in a batch"):
        batches = c.batches(2)
    long = [b for b in batches if any(fake_length(r, t) > 350 for r, t in b)]
    assert long and all(len(b) == 1 for b in long)
    stats = c.batch_stats(2)
    assert stats["oversized"] == len(long) and stats["longest"] == max(fake_length(*b[0]) for b in long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c.batches(0)  # stage 1 has no ecpe: nothing oversized, no warning


def test_bind_with_a_budget_needs_lengths_and_the_sampler_needs_a_budget():
    with pytest.raises(ValueError, match="needs `lengths`"):
        Curriculum(STAGES).bind(RECORDS, budget=TokenBudget(max_tokens=100))
    plain = Curriculum(STAGES)
    plain.bind(RECORDS)
    with pytest.raises(ValueError, match="without a token budget"):
        TokenBudgetSampler(plain)


class _Batches:
    def __getitem__(self, batch):
        return batch

    def __len__(self):
        return len(RECORDS)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_state_resumes_the_epoch_exactly(workers: int):
    c = bound(TokenBudget(max_tokens=1000, packing=True), num_replicas=2)

    def loader(epoch: int) -> StatefulDataLoader:
        return StatefulDataLoader(_Batches(), batch_size=None, sampler=TokenBudgetSampler(c, rank=1, epoch=epoch),
                                  num_workers=workers, collate_fn=list)

    full = list(loader(2))
    assert full == c.batches(2, 1) and len(loader(2)) == c.epoch_batches(2)
    interrupted = iter(first := loader(2))
    taken = [next(interrupted) for _ in range(9)]
    state = first.state_dict()
    resumed = loader(2)
    resumed.load_state_dict(state)
    assert taken + list(resumed) == full


def test_sampler_follows_the_epoch_lightning_announces():
    c = bound(TokenBudget(max_tokens=1000), num_replicas=2)
    s = TokenBudgetSampler(c, rank=0, epoch=0)
    assert list(s) == c.batches(0, 0) and len(s) == c.epoch_batches(0)
    s.set_epoch(2)
    assert (s.stage, len(s), list(s)) == (1, c.epoch_batches(2), c.batches(2, 0))


def test_a_grpo_stage_keeps_batch_size_batches_under_a_budget():
    stages = [STAGES[0], Stage(name="rl", ratios={"mer": 1, "msa": 1}, budget="remaining", objective="grpo")]
    c = Curriculum(stages, seed=5)
    c.bind(RECORDS, batch_size=4, budget=TokenBudget(max_tokens=1000), lengths=fake_length)
    assert [c.token_batches(e) for e in range(3)] == [True, True, False]
    assert c.optimizer_steps()[2] == -(-c.epoch_length(2) // 4)
    assert c.optimizer_steps()[0] == c.epoch_batches(0) == len(c.batches(0))
    with pytest.raises(RuntimeError, match="no token-budget batches .*its stage's objective uses none"):
        c.batches(2)


def test_the_oversized_warning_is_said_once_per_run():
    c = Curriculum([STAGES[0], Stage(name="reasoning", ratios={"mer": 3, "ecpe": 3}, budget="remaining", epochs=3)], seed=5)
    c.bind(RECORDS, budget=TokenBudget(max_tokens=350), lengths=fake_length)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        oversized = [c.batch_stats(e)["oversized"] for _ in range(2) for e in range(c.total_epochs)]
        c.bind(RECORDS, budget=TokenBudget(max_tokens=350), lengths=fake_length)  # rebound, as each epoch's loader does
        c.batches(c.total_epochs - 1)
    assert sum(n > 0 for n in oversized) > 1  # several epochs have oversized draws...
    assert len([w for w in seen if "longer than max_tokens" in str(w.message)]) == 1  # ...and it is said once
