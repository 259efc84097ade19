"""AMT records, shards, the demo data, batching and the LightningDataModule.

Names load on first use (PEP 562), so light users of `emoverse.data.record` (the offline scorer,
the AMT builders) do not import Lightning or transformers.
"""

from __future__ import annotations

from emoverse._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "AMTCollator": "emoverse.data.collator",
    "AMTDataModule": "emoverse.data.datamodule",
    "AMTDataset": "emoverse.data.dataset",
    "Example": "emoverse.data.batches",
    "GenerationBatch": "emoverse.data.batches",
    "GroupBatch": "emoverse.data.batches",
    "TrainBatch": "emoverse.data.batches",
    "make_demo_amt": "emoverse.data.demo",
    "EMOTIONS": "emoverse.data.record",
    "AMTLabels": "emoverse.data.record",
    "AMTRecord": "emoverse.data.record",
    "Utterance": "emoverse.data.record",
    "ShardIndex": "emoverse.data.shards",
    "stream_records": "emoverse.data.shards",
    "write_shards": "emoverse.data.shards",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
