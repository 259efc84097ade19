"""Scaling pieces that run in one process: the memory estimator, FSDP2 units, samplers Lightning must
not wrap, and the multi-device example configs."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from emoverse.curriculum import Curriculum, Stage, TaskWeightedSampler
from emoverse.distributed import RankShardSampler
from emoverse.memory import (
    EMOVERSE_4B,
    EMOVERSE_8B,
    GB,
    INTERN_VIT_300M,
    PAPER_SETTINGS,
    PRESETS,
    TrainSettings,
    estimate,
    markdown_table,
    trained_parameters_line,
)

REPO = Path(__file__).resolve().parents[1]


# estimator ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("count", "published"), [
    (EMOVERSE_4B.llm.params, 3.821e9),  # Phi-3-mini-4k-instruct: 3,821,079,552 parameters (safetensors index)
    (EMOVERSE_8B.llm.params, 7.738e9),  # InternLM2.5-7B-chat: 7,737,708,544
    (INTERN_VIT_300M.params, 0.304e9),  # InternViT-300M-448px: 304 M
])
def test_parameter_counts_match_the_published_models(count: int, published: float) -> None:
    assert abs(count - published) / published < 0.005


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_estimator_counts_the_model_the_preset_builds(name: str) -> None:
    from emoverse.backbones import create_backbone

    arch, bb = PRESETS[name], create_backbone(name, pretrained=False)  # meta device, offline
    count = {part: sum(p.numel() for p in bb.part(part).parameters()) for part in ("vision", "projector")}
    assert count["vision"] == arch.vision.params
    assert count["projector"] == arch.projector_params
    assert sum(p.numel() for p in bb.parameters()) == arch.vision.params + arch.projector_params + arch.llm.params
    bb.add_lora(8, 32, 0.05)
    bb.set_trainable(["projector", "lora"])
    trained = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    assert trained == estimate(arch, PAPER_SETTINGS[name]).trainable_params == arch.llm.lora_params(8) + arch.projector_params


def _doc_block(start: str) -> str:
    text = (REPO / "docs" / "scaling.md").read_text()
    begin = text.index(start)
    return text[begin:text.index("\n\n", begin)]


def test_docs_memory_table_is_the_estimators() -> None:
    # regenerate with: python -m emoverse.memory --table
    assert _doc_block("| model | method | checkpointing | batch |") == markdown_table()
    assert trained_parameters_line() in (REPO / "docs" / "scaling.md").read_text()


def test_paper_goals_hold_with_gradient_checkpointing() -> None:
    # the m2se YAMLs' batch 1 (x 8 accumulation) per GPU
    assert PAPER_SETTINGS["emoverse_4b"].batch_size == PAPER_SETTINGS["emoverse_8b"].batch_size == 1
    qlora_8b = estimate(EMOVERSE_8B, replace(PAPER_SETTINGS["emoverse_8b"], method="qlora", gradient_checkpointing=True))
    lora_4b = estimate(EMOVERSE_4B, replace(PAPER_SETTINGS["emoverse_4b"], method="lora", gradient_checkpointing=True))
    assert qlora_8b.total <= 24 * GB and lora_4b.total <= 24 * GB
    # without checkpointing the 8B model's activations pass what 24 GB leaves next to its weights
    plain = estimate(EMOVERSE_8B, replace(PAPER_SETTINGS["emoverse_8b"], method="qlora"))
    assert plain.total > 24 * GB > qlora_8b.total


def test_estimate_orders_the_methods() -> None:
    base = PAPER_SETTINGS["emoverse_8b"]
    lora, qlora, full = (estimate(EMOVERSE_8B, replace(base, method=m)) for m in ("lora", "qlora", "full"))
    assert qlora.parameters < lora.parameters < full.parameters
    assert lora.trainable_params == qlora.trainable_params < full.trainable_params / 100
    assert full.optimizer == 2 * full.gradients == 8 * full.trainable_params
    assert lora.sequence_tokens == 4 * 256 + 256


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="TrainSettings.method='int4'"):
        TrainSettings(method="int4")
    with pytest.raises(ValueError, match="TrainSettings.batch_size=-1"):
        TrainSettings(batch_size=-1)


# samplers Lightning leaves alone ---------------------------------------------------------------

def test_samplers_are_distributed_samplers_so_lightning_does_not_wrap_them() -> None:
    # Lightning adds a DistributedSampler only where the loader's sampler is not one already
    curriculum = Curriculum([Stage(name="one", ratios={"msa": 1, "mer": 1}, budget="all")])
    curriculum.bind([{"msa", "mer"}] * 10, num_replicas=2)
    ranks = [TaskWeightedSampler(curriculum, rank=r) for r in (0, 1)]
    assert all(isinstance(s, DistributedSampler) for s in ranks)
    assert ranks[0].num_samples == len(ranks[0]) == 5 and ranks[0].total_size == 10  # 10 draws, 5 a rank
    assert Counter(list(ranks[0]) + list(ranks[1])) == Counter(curriculum.draws(0, 0) + curriculum.draws(0, 1))
    shards = [RankShardSampler(5, num_replicas=2, rank=r) for r in (0, 1)]  # evaluation: unpadded
    assert all(isinstance(s, DistributedSampler) for s in shards)
    assert [list(s) for s in shards] == [[0, 2, 4], [1, 3]] and [len(s) for s in shards] == [3, 2]


# FSDP2 units ----------------------------------------------------------------------------------

@pytest.fixture
def one_rank_mesh(tmp_path: Path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'store'}")
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    finally:
        dist.destroy_process_group()


def test_fsdp2_units_never_mix_frozen_and_trainable(one_rank_mesh) -> None:
    from torch.distributed.fsdp import FSDPModule

    from emoverse import EmoVerseModule
    from emoverse.distributed import fully_shard_backbone

    module = EmoVerseModule("tiny", lora_dropout=0.0)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    units = fully_shard_backbone(module, one_rank_mesh["data_parallel"])
    assert sum(u.params for u in units) == total
    assert sum(u.params for u in units if u.trainable) == trainable
    lora_units = [u for u in units if u.name.endswith(".lora")]
    assert len(lora_units) == 2 and all(u.trainable for u in lora_units)  # the tiny LLM has 2 layers
    assert {u.name for u in units if not u.trainable} >= {"llm.layers.0", "llm.layers.1", "vision"}
    assert isinstance(module, FSDPModule)
    assert fully_shard_backbone(module, one_rank_mesh["data_parallel"]) == []  # configure_model runs again
    # training through the units: tests/test_scaling_dist.py (slow, 2 processes)


# multi-device configs -------------------------------------------------------------------------

def _parse(files: list[str], monkeypatch: pytest.MonkeyPatch):
    from emoverse import AMTDataModule, EmoVerseModule
    from emoverse.cli import EmoVerseCLI, cli_kwargs

    class ParseOnly(EmoVerseCLI):
        def instantiate_classes(self) -> None:
            pass

    monkeypatch.setattr(sys, "argv", ["emoverse"])
    args = [a for f in files for a in ("--config", str(REPO / f))]
    return ParseOnly(EmoVerseModule, AMTDataModule, args=args, run=False, parser_kwargs={"exit_on_error": False},
                     **cli_kwargs()).config


@pytest.mark.parametrize(("override", "base", "devices", "nodes", "strategy"), [
    ("ddp_2gpu", "m2se_4b", 2, 1, "ddp"),
    ("fsdp2", "m2se_4b", 4, 1, "lightning.pytorch.strategies.ModelParallelStrategy"),
    ("torchrun", "m2se_4b", 4, 2, "ddp"),
    ("slurm", "m2se_4b", 4, 2, "ddp"),
    ("qlora_8b_24gb", "m2se_8b", 1, 1, "auto"),
    ("deepspeed_zero2", "m2se_8b", 4, 1, "deepspeed_stage_2"),
    ("deepspeed_zero3", "m2se_8b", 4, 1, "deepspeed_stage_3"),
])
def test_scale_configs(override: str, base: str, devices: int, nodes: int, strategy: str,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = _parse([f"examples/configs/{base}.yaml", f"examples/configs/scale/{override}.yaml"], monkeypatch)
    trainer = config.trainer
    assert (trainer.devices, trainer.num_nodes) == (devices, nodes)
    got = trainer.strategy if isinstance(trainer.strategy, str) else trainer.strategy.class_path
    assert got == strategy
    if override == "fsdp2":
        assert trainer.strategy.init_args.data_parallel_size == devices * nodes
        assert trainer.strategy.init_args.tensor_parallel_size == 1
    model = config.model.init_args
    if override == "qlora_8b_24gb":
        # the override replaces the base's dict: it must restate the converted folder (a native Llama,
        # so no remote code)
        assert model.backbone_args == {"path": "checkpoints/InternVL2-8B-hf", "max_length": 2048, "quantization": "4bit"}
    if override in ("ddp_2gpu", "qlora_8b_24gb"):
        assert model.gradient_checkpointing is True  # the memory estimate needs it for 24 GB


@pytest.mark.parametrize("setting", [{"quantization": "4bit"}, {"trust_remote_code": True}])
def test_random_weights_refuse_load_only_settings(setting: dict) -> None:
    from emoverse.backbones import create_backbone

    # pretrained=False builds unquantized native modules: a QLoRA setting must not be silently dropped
    with pytest.raises(ValueError, match=rf"emoverse_8b\(pretrained=False, {next(iter(setting))}=.*apply only when loading"):
        create_backbone("emoverse_8b", pretrained=False, **setting)


def test_random_weights_take_the_dtype() -> None:
    from emoverse.backbones import create_backbone

    bb = create_backbone("emoverse_4b", pretrained=False, dtype="bfloat16")
    assert {p.dtype for p in bb.parameters()} == {torch.bfloat16}
