"""AMT dataset construction."""
from emoverse.amt.facs import au_caption

__all__ = ["au_caption"]
