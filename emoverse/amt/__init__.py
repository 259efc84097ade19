"""AMT dataset construction: source readers, clip frames, FER peak frames and captions, ERI reasons, QC, shards.

`build_amt` (and `emoverse amt build --config amt.yaml`) runs the whole pipeline; docs/amt.md explains it.
"""

from emoverse.amt.build import AMTBuildConfig, build_amt
from emoverse.amt.eri import ERIConfig
from emoverse.amt.facs import AU_TABLES, AUTable, au_caption, load_au_table
from emoverse.amt.fer import AUExtractor, OpenFaceCSVs
from emoverse.amt.peak import PeakFrame, peak_frame
from emoverse.amt.sources import ECFSource, MELDSource, MOSEISource

__all__ = ["AMTBuildConfig", "AUExtractor", "AUTable", "AU_TABLES", "ECFSource", "ERIConfig", "MELDSource", "MOSEISource",
           "OpenFaceCSVs", "PeakFrame", "au_caption", "build_amt", "load_au_table", "peak_frame"]
