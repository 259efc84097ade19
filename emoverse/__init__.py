"""emoverse: multimodal LLMs for sentiment and emotion understanding (EmoVerse, M2SE, AMT).

Public names load on first use (PEP 562), so `emoverse score` and other light tools do not
import the whole training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AMTDataModule": "emoverse.data",
    "AMTRecord": "emoverse.data",
    "make_demo_amt": "emoverse.data",
    "Backbone": "emoverse.backbones",
    "create_backbone": "emoverse.backbones",
    "list_backbones": "emoverse.backbones",
    "register_backbone": "emoverse.backbones",
    "MultiStageCurriculum": "emoverse.curriculum",
    "Stage": "emoverse.curriculum",
    "TaskWeightedSampler": "emoverse.curriculum",
    "m2se_stages": "emoverse.curriculum",
    "EmoVerseModule": "emoverse.module",
    "Task": "emoverse.tasks",
    "get_task": "emoverse.tasks",
    "register_task": "emoverse.tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'emoverse' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
