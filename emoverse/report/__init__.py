"""Run reports: `emoverse report RUN_DIR` and the `RunReport` callback write an HTML page of plots.

The page shows the training loss per task with stage boundaries, the planned task mix against
the draws, validation metrics per stage, per-task analyses of the test answers and the headline
test metrics beside the paper's. See docs/report.md.
"""

from emoverse._lazy import lazy_exports

__all__ = ["RunReport", "write_report"]

# loaded on first use, so `emoverse report --help` does not import Lightning (the callback's) or matplotlib
__getattr__, __dir__ = lazy_exports(__name__, {"RunReport": "emoverse.report.callback",
                                               "write_report": "emoverse.report.page"})
