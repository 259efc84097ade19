"""`mix_streams`: a deterministic, ratio-exact mix of one sample stream per task (for webdataset streaming)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

from emoverse.curriculum._plan import largest_remainder, rng

T = TypeVar("T")
_MIX = 4  # stream tag, distinct from the sampler's


def mix_streams(
    streams: Mapping[str, Iterable[T]],
    ratios: Mapping[str, float],
    seed: int = 0,
    block: int = 1000,
) -> Iterator[tuple[T, str]]:
    """Interleave one stream per task by `ratios`, yielding `(sample, task_name)`.

    `wds.RandomMix` draws each source with the global `random` module, so it is neither seeded nor
    exact; here every `block` draws hold exact task quotas (largest-remainder rounding) in an order
    seeded by (seed, block index), so the mix is reproducible and its shares match the ratios
    within one block. The mix stops when any stream it needs is exhausted (wrap finite streams in
    a repeating iterator, e.g. `wds.WebDataset(..., resampled=True)`, to train by steps).

    Args:
        streams: task name -> iterable of that task's samples (e.g. a webdataset pipeline).
        ratios: task name -> positive weight; keys must match `streams`.
        seed: seed of the order within blocks.
        block: draws per block of exact quotas.
    """
    if set(streams) != set(ratios):
        raise ValueError(f"mix_streams: streams have tasks {sorted(streams)} but ratios have {sorted(ratios)}; they must match")
    if block < 1:
        raise ValueError(f"mix_streams: block={block}, expected an int >= 1")
    bad = {t: w for t, w in ratios.items() if not w > 0}
    if bad:
        raise ValueError(f"mix_streams: ratios {bad} are not positive")
    names = sorted(ratios)
    quotas = largest_remainder(block, [ratios[t] for t in names])
    layout = [i for i, q in enumerate(quotas.tolist()) for _ in range(q)]
    iters = [iter(streams[t]) for t in names]
    index = 0
    while True:
        order = rng(seed, _MIX, index).permutation(layout).tolist()
        for i in order:
            try:
                sample = next(iters[i])
            except StopIteration:
                return
            yield sample, names[i]
        index += 1
