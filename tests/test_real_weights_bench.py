"""The real-weights benchmark's data step (benchmarks/real_weights.py): ECF-train conversations that hold a MELD-test
utterance are left out of training, found through ECF 1.0's `all_data_pair_ECFvsMELD.txt`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("real_weights", REPO / "benchmarks" / "real_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("real_weights", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ECF = """1 2
(2,1)
1 | Ross | neutral | Hi . | train_dia1_utt0
2 | Rachel | joy | Hello ! | train_dia1_utt1
2 2

1 | Joey | neutral | How you doin ? | test_dia3_utt0
2 | Monica | anger | Stop it . | train_dia4_utt1
3 1

1 | Chandler | surprise | Could this BE ... ? | dev_dia2_utt0
"""


def test_conversations_holding_meld_test_utterances_are_left_out(tmp_path: Path) -> None:
    bench = _bench()
    (tmp_path / "all_data_pair_ECFvsMELD.txt").write_text(ECF)
    assert bench.meld_test_conversations(tmp_path) == {2}
    train = tmp_path / "train.txt"
    train.write_text(ECF.replace(" | train_dia1_utt0", "").replace(" | train_dia1_utt1", ""))
    out = tmp_path / "kept.txt"
    assert bench.without_conversations(train, out, {2}) == 1
    kept = out.read_text()
    assert kept.startswith("1 2\n(2,1)\n1 | Ross") and "Joey" not in kept and "3 1\n\n1 | Chandler" in kept
