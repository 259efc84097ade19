"""AMT dataset construction: FACS captions and FER peak frames (source readers come next)."""

from emoverse.amt.facs import au_caption
from emoverse.amt.peak import PeakFrame, peak_frame

__all__ = ["PeakFrame", "au_caption", "peak_frame"]
