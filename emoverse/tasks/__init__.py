"""Tasks: what each affective task asks of an AMT record and how its answer is scored.

Importing this package registers "msa", "mer", "fer", "eri" and "ecpe".
"""

from emoverse.tasks.base import Task
from emoverse.tasks.ecpe import ECPE, ECPEAnswer
from emoverse.tasks.eri import ERI
from emoverse.tasks.fer import FER
from emoverse.tasks.mer import MER
from emoverse.tasks.msa import MSA
from emoverse.tasks.registry import get_task, list_tasks, register_task

__all__ = ["ECPE", "ERI", "FER", "MER", "MSA", "ECPEAnswer", "Task", "get_task", "list_tasks", "register_task"]
