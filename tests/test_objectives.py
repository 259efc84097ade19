"""Objectives as objects: a stage's objective from its three forms (object, registered name, class_path
mapping), the registry's loud unknown names, the module, datamodule and curriculum never branching on an
objective's kind, typed batches moving to a device, `curriculum_run` wiring a curriculum given once, and
the guards on private names of other packages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from emoverse import AMTDataModule, CurriculumRun, EmoVerseModule, Stage, curriculum_run
from emoverse.curriculum import Curriculum, MultiStageCurriculum
from emoverse.data import GenerationBatch, GroupBatch, TrainBatch
from emoverse.objectives import GRPO, SFT, Objective, Preference, get_objective, list_objectives
from emoverse.objectives.sampling import DROPOUTS

REPO = Path(__file__).resolve().parents[1]


def test_a_stage_takes_its_objective_as_an_object_a_name_or_a_class_path():
    assert isinstance(Stage(name="a", ratios={"mer": 1}).objective, SFT)
    assert isinstance(Stage(name="a", ratios={"mer": 1}, objective="preference").objective, Preference)
    grpo = GRPO(group_size=3)
    assert Stage(name="a", ratios={"mer": 1}, objective=grpo).objective is grpo
    built = Stage(name="a", ratios={"mer": 1}, objective={"class_path": "emoverse.objectives.GRPO",
                                                           "init_args": {"group_size": 6}}).objective
    assert isinstance(built, GRPO) and built.group_size == 6
    assert list_objectives() == ["grpo", "preference", "sft"]
    with pytest.raises(ValueError, match=r"Stage 'a': objective: class_path='torch.nn.Linear' is not an importable "
                                         r"Objective subclass"):
        Stage(name="a", ratios={"mer": 1}, objective={"class_path": "torch.nn.Linear"})
    with pytest.raises(ValueError, match=r"objective='dpo', expected an Objective"):
        get_objective("dpo")


def test_each_objective_says_how_its_batches_are_made(tiny_module: EmoVerseModule):
    proc = tiny_module.processor
    assert SFT.uses_token_budget and not GRPO.uses_token_budget and not Preference.uses_token_budget
    assert SFT().collator(proc, pack=True).pack
    assert GRPO(group_size=3).collator(proc).group_size == 3
    assert Preference(group_size=5).collator(proc).group_size == 5


def test_no_objective_kind_is_switched_on_outside_the_objectives_package():
    """The module, datamodule, curriculum and the rest ask a stage's objective; none branch on its kind or
    probe a batch's keys."""
    pattern = re.compile(r"objective\s*[!=]=|\.objective\s+(?:not\s+)?in\b|\"group_size\"\s+(?:not\s+)?in\b|"
                         r"batch\.get\(|\"packed_lengths\"\s+(?:not\s+)?in\b")
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "emoverse").rglob("*.py")
                 if "objectives" not in p.parts
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_a_new_objective_needs_no_change_to_the_module_or_the_datamodule(tiny_module: EmoVerseModule, demo_amt: Path):
    """An objective defined here (not registered, not known to any emoverse file) trains a stage."""
    seen = []

    class Halved(Objective):
        name = "halved"

        def collator(self, processor, system_prompt=None, pack=False):
            return SFT().collator(processor, system_prompt, pack)

        def training_step(self, module, batch, stage):
            seen.append((type(batch).__name__, stage))
            return module(batch)["loss"] / 2

    curriculum = Curriculum([Stage(name="half", ratios={"mer": 1}, budget=8, objective=Halved())])
    module = EmoVerseModule("tiny", tasks=["mer"], curriculum=curriculum)
    data = AMTDataModule(str(demo_amt), batch_size=2, processor=module.processor, tasks=module.tasks,
                         curriculum=curriculum)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))

    class Trainer:
        current_epoch = 0

    module._trainer = Trainer()  # training_step reads the epoch only
    loss = module.training_step(batch, 0)
    assert seen == [("TrainBatch", 0)] and torch.isfinite(loss)


def test_typed_batches_move_their_tensors_only():
    inputs = {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"}
    train = TrainBatch(inputs, torch.zeros(2, 3, dtype=torch.long), ["mer", "msa"], ["a", "b"],
                       packed_lengths=torch.tensor([3, 3]))
    moved = train.to("meta")
    assert moved.inputs["input_ids"].device.type == "meta" and moved.labels.device.type == "meta"
    assert moved.packed_lengths.device.type == "meta" and moved.inputs["note"] == "kept"
    assert train.inputs["input_ids"].device.type == "cpu"  # a new batch; the old one stays
    group = GroupBatch(inputs, ["mer", "mer"], ["a", "a"], ["q", "q"], [None, None], group_size=2)
    assert isinstance(group.to("meta"), GroupBatch) and group.to("meta").group_size == 2
    assert group.draws == [("a", "mer")] and group.prompts == 1 and len(group) == 2
    assert isinstance(group, GenerationBatch) and train.draws == [("a", "mer"), ("b", "msa")]


def test_curriculum_run_wires_a_curriculum_given_once(demo_amt: Path):
    curriculum = Curriculum([Stage(name="one", ratios={"mer": 1}, budget=8, epochs=2),
                             Stage(name="two", ratios={"msa": 1}, budget=8, epochs=1)])
    run = curriculum_run(curriculum, model={"backbone": "tiny", "tasks": ["mer", "msa"]},
                         data={"path": str(demo_amt), "batch_size": 4},
                         trainer={"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                                  "limit_val_batches": 0, "num_sanity_val_steps": 0, "max_steps": 2,
                                  "enable_progress_bar": False})
    assert isinstance(run, CurriculumRun)
    assert run.module.curriculum is curriculum and run.data.curriculum is curriculum
    assert run.data.processor is run.module.processor and run.data.tasks == run.module.tasks
    assert run.trainer.max_epochs == 3 and run.trainer.reload_dataloaders_every_n_epochs == 1
    callbacks = [c for c in run.trainer.callbacks if isinstance(c, MultiStageCurriculum)]
    assert len(callbacks) == 1 and callbacks[0].curriculum is curriculum
    run.fit()
    assert run.trainer.global_step == 2
    with pytest.raises(ValueError, match=r"curriculum_run: data sets \['tasks'\], which the curriculum run wires"):
        curriculum_run(curriculum, data={"path": str(demo_amt), "tasks": {}})


def test_every_torch_dropout_layer_is_known():
    """`no_dropout` lists torch's public dropout classes instead of importing its private `_DropoutNd`; this
    fails loudly when torch adds one (or renames the base, which then needs a look)."""
    base = nn.modules.dropout._DropoutNd
    public = {c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, base)}
    assert public == set(DROPOUTS)
