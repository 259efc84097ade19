"""Trained weights round-trip through safetensors (peft adapter + projector)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoverse import EmoVerseModule
from emoverse.export import export_trained, load_trained


def test_export_and_load_restore_the_trained_weights(tmp_path: Path) -> None:
    a = EmoVerseModule("tiny")
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    out = export_trained(a, tmp_path / "export")
    assert (out / "lora" / "adapter_model.safetensors").exists()
    b = EmoVerseModule("tiny")
    load_trained(b, out)
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_from_a_wrong_folder_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lora is missing"):
        load_trained(EmoVerseModule("tiny"), tmp_path)
