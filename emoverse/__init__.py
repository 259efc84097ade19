"""emoverse: multimodal LLMs for sentiment and emotion understanding (EmoVerse, M2SE, AMT)."""

from emoverse.backbones import Backbone, create_backbone, list_backbones, register_backbone
from emoverse.curriculum import MultiStageCurriculum, Stage, TaskWeightedSampler, m2se_stages
from emoverse.data import AMTDataModule, AMTRecord, make_demo_amt
from emoverse.module import EmoVerseModule
from emoverse.tasks import Task, get_task, register_task

__version__ = "0.1.0"
__all__ = [
    "AMTDataModule", "AMTRecord", "Backbone", "EmoVerseModule", "MultiStageCurriculum", "Stage", "Task",
    "TaskWeightedSampler", "create_backbone", "get_task", "list_backbones", "m2se_stages", "make_demo_amt",
    "register_backbone", "register_task",
]
