"""Which task is seen when: the curriculum, its stages, the task-weighted sampler, the stage-switching callback."""

from emoverse.curriculum.batching import TokenBudget
from emoverse.curriculum.callback import MultiStageCurriculum
from emoverse.curriculum.curriculum import Curriculum
from emoverse.curriculum.m2se import m2se_stages
from emoverse.curriculum.sampler import TaskWeightedSampler, TokenBudgetSampler
from emoverse.curriculum.stage import Stage
from emoverse.curriculum.streams import mix_streams

__all__ = ["Curriculum", "MultiStageCurriculum", "Stage", "TaskWeightedSampler", "TokenBudget", "TokenBudgetSampler",
           "m2se_stages", "mix_streams"]
