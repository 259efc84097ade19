"""docs/backbones.md's user paths run as written: the subclass example, a preset by name, entry points."""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from emoverse.backbones import create_backbone, list_backbones, registry
from emoverse.data.collator import AMTCollator
from tests.test_backbones import examples

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "backbones.md").read_text()
EXAMPLE = REPO / "examples" / "custom_backbone.py"


def code_block(header: str) -> str:
    """The fenced python block of docs/backbones.md whose first line is `header`, without that line."""
    for block in re.findall(r"```python\n(.*?)```", DOC, flags=re.S):
        first, _, rest = block.partition("\n")
        if first.strip() == header:
            return rest
    raise AssertionError(f"docs/backbones.md has no python block starting with {header!r}")


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry, so presets a test registers leave with it."""
    presets = dict(registry._PRESETS)
    monkeypatch.setattr(registry, "_PRESETS", presets)
    return presets


def test_the_subclass_example_in_the_docs_is_the_example_file() -> None:
    code = code_block("# examples/custom_backbone.py")
    assert code == EXAMPLE.read_text().split('"""', 2)[2].lstrip("\n")


def test_the_subclass_example_runs_as_written(fresh_registry: dict) -> None:
    module = types.ModuleType("custom_backbone_from_docs")
    exec(compile(code_block("# examples/custom_backbone.py"), "docs/backbones.md", "exec"), module.__dict__)
    torch.manual_seed(0)
    bb = module.ConvBackbone(channels=16)
    bb.add_lora(4, 16, 0.0)
    bb.set_trainable(["projector", "lora"])
    out = bb.loss(AMTCollator(bb.processor, "train")(examples()))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and bb.part("projector").weight.grad is not None
    # the preset by name takes overrides of its defaults
    small = create_backbone("conv_small", channels=16)
    assert small.part("projector").in_features == 16


def test_the_yaml_class_path_in_the_docs_names_the_example_file_and_class() -> None:
    paths = set(re.findall(r"class_path: (custom_backbone\.\w+)", DOC))
    assert paths == {"custom_backbone.ConvBackbone"}
    module, cls = paths.pop().split(".")
    assert (REPO / "examples" / f"{module}.py").exists() and f"class {cls}(Backbone)" in EXAMPLE.read_text()


def test_a_preset_registered_in_a_users_package_is_found_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: dict
) -> None:
    """The `emoverse.backbones` entry-point group: an installed package's module registers its presets."""
    (tmp_path / "my_presets.py").write_text(
        "from emoverse.backbones import create_backbone, register_backbone\n\n"
        "@register_backbone\ndef my_tiny(**kwargs):\n    return create_backbone('tiny', hidden=64, **kwargs)\n")
    dist = tmp_path / "my_presets-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-presets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[emoverse.backbones]\nmy_presets = my_presets\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "my_presets", raising=False)
    importlib.invalidate_caches()
    assert "my_tiny" in list_backbones()
    assert create_backbone("my_tiny").core.llm.config.hidden_size == 64

    from emoverse import EmoVerseModule  # the CLI's `backbone: my_tiny` goes through the module's constructor

    assert EmoVerseModule("my_tiny").backbone.core.llm.config.hidden_size == 64


def test_an_entry_point_that_fails_to_import_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: dict
) -> None:
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[emoverse.backbones]\nbroken = no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    importlib.invalidate_caches()
    with pytest.raises(ImportError, match=r"entry point broken = 'no_such_module_here' \('emoverse.backbones' group, "
                                          r"from broken\) failed to import"):
        create_backbone("not_registered_anywhere")


def test_the_listed_presets_are_the_registered_ones() -> None:
    listing = DOC.split("list_backbones()   #", 1)[1].split("\nbb = ", 1)[0]
    assert re.findall(r"'(\w+)'", listing) == list_backbones()
