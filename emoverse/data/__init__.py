"""AMT records, shards, the demo data, batching and the LightningDataModule."""

from emoverse.data.collator import AMTCollator
from emoverse.data.datamodule import AMTDataModule
from emoverse.data.dataset import AMTDataset
from emoverse.data.demo import make_demo_amt
from emoverse.data.record import EMOTIONS, AMTLabels, AMTRecord, Utterance
from emoverse.data.shards import ShardIndex, stream_records, write_shards

__all__ = ["EMOTIONS", "AMTCollator", "AMTDataModule", "AMTDataset", "AMTLabels", "AMTRecord", "ShardIndex",
           "Utterance", "make_demo_amt", "stream_records", "write_shards"]
