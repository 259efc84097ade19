"""Training objectives: how a curriculum stage trains (`Stage(objective=...)`).

`SFT` (cross-entropy on the tasks' answers, the default), `GRPO` (reinforcement with the tasks'
rewards) and `Preference` (DPO on pairs of the model's own answers ranked by the tasks' rewards), all
subclasses of `Objective`; `get_objective(name)` builds a registered one by its short name.
"""

from __future__ import annotations

from emoverse.objectives.base import Objective, get_objective, list_objectives, register_objective
from emoverse.objectives.grpo import GRPO
from emoverse.objectives.preference import Preference
from emoverse.objectives.sft import SFT

__all__ = ["GRPO", "SFT", "Objective", "Preference", "get_objective", "list_objectives", "register_objective"]
