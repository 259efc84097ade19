"""torchmetrics `Metric`s for the paper's scores; every state reduces correctly under DDP."""

from emoverse.metrics.ecpe import ECPEPairF1, conversation_key
from emoverse.metrics.emotion import EmotionAccuracyF1, EmotionF1
from emoverse.metrics.sentiment import SentimentAcc2
from emoverse.metrics.text import TokenF1, token_f1

__all__ = [
    "ECPEPairF1",
    "EmotionAccuracyF1",
    "EmotionF1",
    "SentimentAcc2",
    "TokenF1",
    "conversation_key",
    "token_f1",
]
