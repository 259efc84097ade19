"""Trainable-only checkpoints: complete on load, loud when a trained weight is missing or foreign,
and they remember every part a stage has trained."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from emoverse import EmoVerseModule, create_backbone


def save(module: EmoVerseModule, path: Path) -> Path:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def perturbed(**kwargs) -> EmoVerseModule:
    torch.manual_seed(0)
    module = EmoVerseModule("tiny", **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return module


def test_round_trip_restores_trained_weights_without_warnings(tmp_path: Path) -> None:
    a = perturbed()
    path = save(a, tmp_path / "a.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "missing keys" warning for the frozen weights
        b = EmoVerseModule.load_from_checkpoint(path, weights_only=True)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parts_a_stage_trained_are_remembered_across_a_resume(tmp_path: Path) -> None:
    a = perturbed()
    a.set_trainable(["projector", "lora", "vision"])   # trainable, but no optimizer step yet: not in checkpoints
    a.set_trainable(["projector", "lora"])
    assert not [k for k in a.trainable_state_dict() if ".vision." in k]
    a.set_trainable(["projector", "lora", "vision"])   # a stage trained the vision encoder ...
    a.on_before_optimizer_step(None)                   # (Lightning calls this before every optimizer step)
    a.set_trainable(["projector", "lora"])             # ... and the next froze it again
    ckpt = torch.load(save(a, tmp_path / "a.ckpt"), weights_only=True)
    vision = [k for k in ckpt["state_dict"] if ".vision." in k]
    assert vision, "the vision weights trained once, so they are part of every later checkpoint"
    b = EmoVerseModule.load_from_checkpoint(tmp_path / "a.ckpt", weights_only=True)
    assert set(vision) <= set(b.trainable_state_dict())


def test_missing_trained_weight_is_an_error(tmp_path: Path) -> None:
    path = save(perturbed(), tmp_path / "a.ckpt")
    ckpt = torch.load(path, weights_only=True)
    dropped = next(k for k in ckpt["state_dict"] if "lora_" in k)
    del ckpt["state_dict"][dropped]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"checkpoint lacks 1 trained weights \(e.g. \['" + dropped.replace(".", r"\.")):
        EmoVerseModule.load_from_checkpoint(path, weights_only=True)


def test_checkpoint_of_another_backbone_is_an_error(tmp_path: Path) -> None:
    path = save(perturbed(), tmp_path / "tiny.ckpt")
    with pytest.raises(ValueError, match="weights this backbone does not have .* another backbone or LoRA setting"):
        EmoVerseModule.load_from_checkpoint(path, weights_only=True, backbone="tiny_llava")


def test_python_built_backbone_must_be_given_again(tmp_path: Path) -> None:
    module = EmoVerseModule(create_backbone("tiny", hidden=64))
    path = save(module, tmp_path / "py.ckpt")
    with pytest.raises(ValueError, match="built with a ComposedBackbone object, which a checkpoint cannot rebuild: pass backbone="):
        EmoVerseModule.load_from_checkpoint(path, weights_only=True)
    EmoVerseModule.load_from_checkpoint(path, weights_only=True, backbone=create_backbone("tiny", hidden=64))
