"""Curriculum, TaskWeightedSampler, the train loader's position, Stage and mix_streams, without a model."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from emoverse.curriculum import Curriculum, Stage, TaskWeightedSampler, m2se_stages, mix_streams
from emoverse.data.demo import amt_label_sets

N_RECORDS = 6000
STAGES = [
    Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=1500, epochs=2),
    Stage(name="reasoning", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, budget="remaining", epochs=2),
]
RECORDS = amt_label_sets(N_RECORDS, 0)


def bound(stages: list[Stage] = STAGES, seed: int = 7, num_replicas: int = 1, records=RECORDS) -> Curriculum:
    curriculum = Curriculum(stages, seed=seed)
    curriculum.bind(records, num_replicas)
    return curriculum


def test_realized_shares_match_ratios_over_100k_draws():
    c = bound([Stage(name="s", ratios={"msa": 6, "fer": 3, "mer": 1}, budget="all", epochs=40)], seed=3)
    counts: Counter[str] = Counter()
    for epoch in itertools.count():
        counts.update(task for _, task in c.draws(epoch))
        if counts.total() >= 100_000:
            break
    total = counts.total()
    for task, share in {"msa": 0.6, "fer": 0.3, "mer": 0.1}.items():
        assert abs(counts[task] / total - share) < 0.005, (task, counts[task] / total)


def test_stage_two_shares_and_quotas_are_exact():
    c = bound()
    counts = Counter(task for _, task in c.draws(2))  # global epoch 2 = stage 2's first
    assert dict(counts) == c.quotas(1)
    assert sum(counts.values()) == c.epoch_length(2) == c.plans[1].length
    assert counts["mer"] == counts["eri"] == counts["ecpe"] == pytest.approx(3 * counts["msa"], abs=3)


def test_pools_are_disjoint_and_complete():
    c = bound()
    first, rest = set(c.pool(0).tolist()), set(c.pool(1).tolist())
    assert len(first) == 1500
    assert not first & rest
    assert first | rest == set(range(N_RECORDS))
    assert c.epoch_length(0) == 1500  # stage 1's epoch: one draw per pool record
    assert {r for r, _ in c.draws(0)} <= first


def test_only_labelled_pairs_and_cycle_covers_records():
    c = bound()
    for epoch in (0, 2):
        pairs = c.draws(epoch)
        assert all(task in RECORDS[r] for r, task in pairs)
        # msa has 9000/10 quota in stage 1 but ~1000 eligible records: each used before any repeats
        by_task: dict[str, Counter] = {}
        for r, task in pairs:
            by_task.setdefault(task, Counter())[r] += 1
        for task, counter in by_task.items():
            assert max(counter.values()) - min(counter.values()) <= 1, (epoch, task)


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_every_draw_of_the_epoch_lands_on_exactly_one_rank(ranks: int):
    one, split = bound(), bound(num_replicas=ranks)
    for epoch in range(one.total_epochs):
        shares = [split.draws(epoch, r) for r in range(ranks)]
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) == split.epoch_length(epoch)
        together = Counter(p for s in shares for p in s)
        padding = ranks * split.epoch_length(epoch) - one.epoch_length(epoch)  # wrapped around to even the ranks
        assert together - Counter(one.draws(epoch)) == Counter(one.draws(epoch)[:padding])
        assert Counter(one.draws(epoch)) - together == Counter()


def test_epochs_reshuffle_and_are_reproducible():
    c = bound()
    e0, e1 = c.draws(0), c.draws(1)
    assert e0 != e1
    assert bound().draws(1) == e1  # same seed, same draws, computed without replaying epoch 0
    assert bound(seed=8).draws(0) != e0
    assert (c.stage_of(1), c.stage_of(2), c.stage_epoch(3), c.stage_of(99)) == (0, 1, 1, 1)


def test_sampler_follows_the_epoch_lightning_announces():
    c = bound(num_replicas=2)
    s = TaskWeightedSampler(c, rank=1, epoch=0)
    assert list(s) == c.draws(0, 1) and len(s) == c.epoch_length(0)
    s.set_epoch(2)  # stage 2 starts: the sampler draws its mix and has its length
    assert (s.stage, len(s), list(s)) == (1, c.epoch_length(2), c.draws(2, 1))


class _Pairs:
    def __getitem__(self, pair):
        return pair

    def __len__(self):
        return N_RECORDS


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_state_resumes_the_epoch_exactly(workers: int):
    # the position is the train loader's state, counted in delivered draws (prefetching included)
    c = bound()

    def loader(epoch: int) -> StatefulDataLoader:
        return StatefulDataLoader(_Pairs(), batch_size=7, sampler=TaskWeightedSampler(c, epoch=epoch),
                                  num_workers=workers, collate_fn=list)

    full = [p for batch in loader(3) for p in batch]
    interrupted = iter(first := loader(3))
    taken = [p for _ in range(20) for p in next(interrupted)]
    state = first.state_dict()
    resumed = loader(3)
    resumed.load_state_dict(state)
    assert taken + [p for batch in resumed for p in batch] == full


def test_curriculum_validates_its_stages():
    with pytest.raises(ValueError, match="stages=\\[\\]"):
        Curriculum([])
    with pytest.raises(ValueError, match="distinct"):
        Curriculum([Stage(name="a", ratios={"msa": 1}), Stage(name="a", ratios={"mer": 1})])
    with pytest.raises(RuntimeError, match="not bound"):
        Curriculum(STAGES).epoch_length(0)
    assert Curriculum().total_epochs == 4 and Curriculum().parts == ["projector", "lora"]


def test_budget_larger_than_pool_names_both_numbers():
    stages = [Stage(name="big", ratios={"ecpe": 1}, budget=2500)]
    with pytest.raises(ValueError, match=r"budget=2500 but only 2000 records"):
        bound(stages)


def test_task_without_records_in_pool_is_an_error():
    stages = [Stage(name="a", ratios={"msa": 1}, budget="all"), Stage(name="b", ratios={"mer": 1})]
    with pytest.raises(ValueError, match=r"stage 1 'b': task 'mer' has no labelled record"):
        bound(stages)


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
