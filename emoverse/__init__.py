"""emoverse: multimodal LLMs for sentiment and emotion understanding (EmoVerse, M2SE, AMT).

Public names load on first use (PEP 562), so `emoverse score` and other light tools do not
import the whole training stack.
"""

from __future__ import annotations

from emoverse._lazy import lazy_exports
from emoverse._quiet import quiet_imports

quiet_imports()  # before anything imports peft, which imports bitsandbytes (emoverse._quiet.IMPORT_LOGS)

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AMTDataModule": "emoverse.data",
    "AMTRecord": "emoverse.data",
    "make_demo_amt": "emoverse.data",
    "Backbone": "emoverse.backbones",
    "ComposedBackbone": "emoverse.backbones",
    "HFVisionLanguageBackbone": "emoverse.backbones",
    "create_backbone": "emoverse.backbones",
    "list_backbones": "emoverse.backbones",
    "register_backbone": "emoverse.backbones",
    "Curriculum": "emoverse.curriculum",
    "MultiStageCurriculum": "emoverse.curriculum",
    "Stage": "emoverse.curriculum",
    "TaskWeightedSampler": "emoverse.curriculum",
    "m2se_stages": "emoverse.curriculum",
    "EmoVerseModule": "emoverse.module",
    "CurriculumRun": "emoverse.run",
    "curriculum_run": "emoverse.run",
    "Task": "emoverse.tasks",
    "get_task": "emoverse.tasks",
    "register_task": "emoverse.tasks",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
