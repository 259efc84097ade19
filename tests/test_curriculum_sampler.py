"""TaskWeightedSampler, Stage and mix_streams, without a model."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from emoverse.curriculum import Stage, TaskWeightedSampler, m2se_stages, mix_streams
from emoverse.data.demo import amt_label_sets

N_RECORDS = 6000
STAGES = [
    Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=1500, epochs=2),
    Stage(name="reasoning", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, budget="remaining", epochs=2),
]


def amt_like(n: int = N_RECORDS, seed: int = 0) -> list[set[str]]:
    return amt_label_sets(n, seed)


RECORDS = amt_like()


def sampler(**kw) -> TaskWeightedSampler:
    args = {"record_tasks": RECORDS, "stages": STAGES, "seed": 7, "num_replicas": 1, "rank": 0} | kw
    return TaskWeightedSampler(**args)


def test_realized_shares_match_ratios_over_100k_draws():
    stages = [Stage(name="s", ratios={"msa": 6, "fer": 3, "mer": 1}, budget="all", epochs=1)]
    s = TaskWeightedSampler(RECORDS, stages, seed=3, num_replicas=1, rank=0)
    counts: Counter[str] = Counter()
    for epoch in itertools.count():
        s.set_epoch(epoch)
        counts.update(task for _, task in s)
        if counts.total() >= 100_000:
            break
    total = counts.total()
    for task, share in {"msa": 0.6, "fer": 0.3, "mer": 0.1}.items():
        assert abs(counts[task] / total - share) < 0.005, (task, counts[task] / total)


def test_stage_two_shares_and_quotas_are_exact():
    s = sampler()
    s.set_stage(1)
    counts = Counter(task for _, task in s)
    assert dict(counts) == s.quotas(1)
    assert sum(counts.values()) == len(s) == s.plans[1].length
    assert counts["mer"] == counts["eri"] == counts["ecpe"] == pytest.approx(3 * counts["msa"], abs=3)


def test_pools_are_disjoint_and_complete():
    s = sampler()
    first, rest = set(s.pool(0).tolist()), set(s.pool(1).tolist())
    assert len(first) == 1500
    assert not first & rest
    assert first | rest == set(range(N_RECORDS))
    assert len(s) == 1500  # stage 1's epoch: one draw per pool record
    assert {r for r, _ in s} <= first


def test_only_labelled_pairs_and_cycle_covers_records():
    s = sampler()
    for stage in (0, 1):
        s.set_stage(stage)
        pairs = list(s)
        assert all(task in RECORDS[r] for r, task in pairs)
        # msa has 9000/10 quota in stage 1 but ~1000 eligible records: each used before any repeats
        by_task: dict[str, Counter] = {}
        for r, task in pairs:
            by_task.setdefault(task, Counter())[r] += 1
        for task, c in by_task.items():
            assert max(c.values()) - min(c.values()) <= 1, (stage, task)


def test_two_ranks_get_disjoint_equal_shares():
    a, b = sampler(num_replicas=2, rank=0), sampler(num_replicas=2, rank=1)
    one = sampler()
    for s in (a, b, one):
        s.set_epoch(1)
    pa, pb = list(a), list(b)
    assert len(pa) == len(pb) == len(a) == 750
    assert Counter(pa) + Counter(pb) == Counter(list(one))  # together: the single-rank epoch, split
    odd = sampler(num_replicas=4, rank=3, stages=[Stage(name="s", ratios={"msa": 1}, budget=1001)])
    assert len(odd) == len(list(odd)) == 251  # padded
    trimmed = sampler(num_replicas=4, rank=3, drop_last=True, stages=[Stage(name="s", ratios={"msa": 1}, budget=1001)])
    assert len(trimmed) == len(list(trimmed)) == 250


def test_epochs_reshuffle_and_are_reproducible():
    s, t = sampler(), sampler()
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1
    t.set_epoch(1)
    assert list(t) == e1
    assert list(sampler(seed=8)) != e0
    s.set_epoch(2)  # the sampler follows the global epoch into stage 2
    assert (s.stage, s.stage_epoch) == (1, 0)


def test_state_dict_round_trip_continues_mid_epoch_exactly():
    s = sampler()
    s.set_epoch(3)  # stage 2, second epoch
    full = list(s)
    s.consumed = 1234  # what the callback sets from the trainer's batch count
    state = s.state_dict()
    resumed = sampler()
    resumed.load_state_dict(state)
    assert (resumed.stage, resumed.stage_epoch) == (1, 1)
    assert len(resumed) == len(full)
    assert list(resumed) == full[1234:]
    resumed.set_epoch(3)  # Lightning re-announces the same epoch: position kept
    assert next(iter(resumed)) == full[1234]
    resumed.set_epoch(4)  # a new epoch starts from its beginning
    assert resumed.consumed == 0
    with pytest.raises(ValueError, match="seed"):
        sampler(seed=1).load_state_dict(state)


def test_seen_counts_per_stage():
    s = sampler()
    s.set_epoch(1)
    assert s.seen(0) == {t: q for t, q in s.quotas(0).items()}  # epoch 0 of the stage, in full
    first = Counter(task for _, task in itertools.islice(iter(s), 100))
    assert s.seen(100) == {t: s.quotas(0)[t] + first[t] for t in s.quotas(0)}


def test_budget_larger_than_pool_names_both_numbers():
    stages = [Stage(name="big", ratios={"ecpe": 1}, budget=2500)]
    with pytest.raises(ValueError, match=r"budget=2500 but only 2000 records"):
        TaskWeightedSampler(RECORDS, stages, num_replicas=1, rank=0)


def test_task_without_records_in_pool_is_an_error():
    stages = [Stage(name="a", ratios={"msa": 1}, budget="all"), Stage(name="b", ratios={"mer": 1})]
    with pytest.raises(ValueError, match=r"stage 1 'b': task 'mer' has no labelled record"):
        TaskWeightedSampler(RECORDS, stages, num_replicas=1, rank=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratios": {}}, "ratios"),
        ({"ratios": {"msa": 0}}, r"ratios\['msa'\]=0"),
        ({"ratios": {"xyz": 1}}, "unknown task.*'xyz'.*known tasks"),
        ({"budget": "rest"}, r"budget='rest'.*'remaining', 'all'"),
        ({"budget": 0}, "budget=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"samples_per_epoch": 0}, "samples_per_epoch=0"),
        ({"train": ["llm"]}, r"train=\['llm'\].*'projector', 'lora', 'vision'"),
        ({"lr": -1.0}, "lr=-1.0"),
    ],
)
def test_stage_validation_names_field_and_allowed_values(kwargs, match):
    args = {"name": "s", "ratios": {"msa": 1}} | kwargs
    with pytest.raises(ValueError, match=match):
        Stage(**args)


def test_m2se_preset():
    one, two = m2se_stages()
    assert (one.budget, one.ratios) == (15000, {"msa": 6, "fer": 3, "mer": 1})
    assert (two.budget, two.ratios) == ("remaining", {"mer": 3, "eri": 3, "ecpe": 3, "msa": 1})


def counter_stream(task: str):
    return (f"{task}{i}" for i in itertools.count())


def test_mix_streams_is_seeded_and_exact_per_block():
    def streams():
        return {t: counter_stream(t) for t in ("msa", "fer", "mer")}

    ratios = {"msa": 6, "fer": 3, "mer": 1}
    a = list(itertools.islice(mix_streams(streams(), ratios, seed=1, block=100), 1000))
    b = list(itertools.islice(mix_streams(streams(), ratios, seed=1, block=100), 1000))
    assert a == b != list(itertools.islice(mix_streams(streams(), ratios, seed=2, block=100), 1000))
    assert Counter(task for _, task in a[:100]) == {"msa": 60, "fer": 30, "mer": 10}
    assert [s for s, t in a if t == "fer"][:3] == ["fer0", "fer1", "fer2"]  # each stream read in order
    finite = {"msa": iter(range(5)), "fer": iter(range(100)), "mer": iter(range(100))}
    assert sum(t == "msa" for _, t in mix_streams(finite, ratios, block=10)) == 5  # stops at exhaustion
