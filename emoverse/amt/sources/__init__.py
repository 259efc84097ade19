"""Source readers: CMU-MOSEI, MELD and ECF files → candidate AMT records with their official splits."""

from emoverse.amt.sources.base import DROP_REASONS, LABEL_REMOVALS, Candidate, Clip, Rejected
from emoverse.amt.sources.ecf import ECFSource
from emoverse.amt.sources.meld import MELDSource
from emoverse.amt.sources.mosei import MOSEISource

__all__ = ["DROP_REASONS", "LABEL_REMOVALS", "Candidate", "Clip", "ECFSource", "MELDSource", "MOSEISource", "Rejected"]
