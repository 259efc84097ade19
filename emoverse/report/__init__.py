"""Run reports: `emoverse report RUN_DIR` and the `RunReport` callback write an HTML page of plots.

The page shows the training loss per task with stage boundaries, the planned task mix against
the draws, validation metrics per stage, per-task analyses of the test answers and the headline
test metrics beside the paper's. See docs/report.md.
"""

from emoverse.report.callback import RunReport
from emoverse.report.page import write_report

__all__ = ["RunReport", "write_report"]
