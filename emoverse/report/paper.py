"""The EmoVerse paper's published figures, for comparison beside a run's (percentages, as printed).

Acc2 is given as N/N (negative vs non-negative) / N/P (negative vs positive), as in the paper.
"""

from __future__ import annotations

HEADLINE_LABELS: dict[str, str] = {
    "msa/acc2_nn": "CMU-MOSEI Acc2 (N/N)", "msa/acc2_np": "CMU-MOSEI Acc2 (N/P)", "mer/acc": "MELD Acc",
    "mer/weighted_f1": "MELD W-F1", "ecpe/f1": "ECF 2.0 F1", "ecpe/weighted_f1": "ECF 2.0 W-F1",
}
"""The paper's headline columns, keyed by the logged `{task}/{metric}` name."""

TABLE4_EMOVERSE_4B: dict[str, float] = {
    "msa/acc2_nn": 85.51, "msa/acc2_np": 87.80, "mer/acc": 67.28, "mer/weighted_f1": 66.58,
    "ecpe/f1": 72.30, "ecpe/weighted_f1": 72.21,
}
"""Table 4, EmoVerse-4B."""


def _row(nn: float, np_: float, *rest: float) -> dict[str, float]:
    keys = ("msa/acc2_nn", "msa/acc2_np", "mer/acc", "mer/weighted_f1", "ecpe/f1", "ecpe/weighted_f1")
    return dict(zip(keys, (nn, np_, *rest)))


ABLATION_ROWS: dict[str, tuple[str, dict[str, float]]] = {
    "table2_fer_low": ("Table 2, MSA:FER:MER 6:1:3", _row(77.09, 87.47)),
    "table2_fer_high": ("Table 2, 6:3:1 (= Table 3, first stage)", _row(82.61, 87.50)),
    "table3_mer": ("Table 3, MER", _row(81.68, 87.20, 66.74, 66.24, 25.40, 26.69)),
    "table3_mer_eri_ecpe": ("Table 3, MER, ERI, ECPE", _row(79.00, 86.78, 66.97, 65.67, 69.85, 69.95)),
    "m2se": ("Tables 3 and 5, M2SE", _row(85.51, 87.80, 67.78, 66.74, 72.30, 72.21)),
    "table5_msa": ("Table 5, MSA only", _row(83.96, 88.16, 48.12, 31.27, 41.67, 41.14)),
    "table5_mer": ("Table 5, MER only", _row(78.99, 80.17, 66.21, 65.71, 40.61, 38.23)),
    "table5_ecpe": ("Table 5, ECPE only", _row(83.27, 85.85, 32.38, 33.43, 72.69, 72.59)),
}
"""The paper's rows for the runs `examples/run_ablations.sh` names (EmoVerse-4B; Tables 3 and 5 print
MELD 67.78 / 66.74 for M2SE where Table 4 prints 67.28 / 66.58)."""
