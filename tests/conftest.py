"""Shared fixtures: the demo AMT (built once per session) and a tiny module."""

from __future__ import annotations

import os
from pathlib import Path

# No test may reach a model hub: any accidental hub id fails fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from emoverse import AMTDataModule, EmoVerseModule, make_demo_amt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_amt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart's demo AMT (default size, seed 0)."""
    path = tmp_path_factory.mktemp("demo_amt")
    make_demo_amt(path, seed=0)
    return path


@pytest.fixture
def tiny_module() -> EmoVerseModule:
    torch.manual_seed(0)
    return EmoVerseModule("tiny", lr=1e-3)


@pytest.fixture
def demo_data(demo_amt: Path, tiny_module: EmoVerseModule) -> AMTDataModule:
    dm = AMTDataModule(str(demo_amt), batch_size=4, eval_batch_size=4, processor=tiny_module.processor,
                       tasks=tiny_module.tasks)
    dm.setup("fit")
    return dm
