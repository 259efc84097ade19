"""The paper's M2SE preset: perception (MSA:FER:MER = 6:3:1 on 15,000 records), then reasoning."""

from __future__ import annotations

from emoverse.curriculum.stage import Stage


def m2se_stages(stage1_budget: int = 15000, epochs: int = 2) -> list[Stage]:
    """The two M2SE stages of the EmoVerse paper.

    Stage 1 ("perception") trains on `stage1_budget` randomly chosen AMT records with
    MSA:FER:MER = 6:3:1; stage 2 ("reasoning") on the remaining records with
    MER:ERI:ECPE:MSA = 3:3:3:1. Both train the projector and the LoRA adapter (the ViT is frozen).

    Args:
        stage1_budget: records of stage 1 (the paper: 15,000).
        epochs: epochs of each stage.

    Returns:
        The stages, for `MultiStageCurriculum(stages=...)` or `TaskWeightedSampler(stages=...)`.
    """
    return [
        Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=stage1_budget, epochs=epochs),
        Stage(name="reasoning", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, budget="remaining", epochs=epochs),
    ]
