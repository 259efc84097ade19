"""Third-party messages the `emoverse` command hides (all shown again with `--debug`).

Each entry is a message that every run printed and that asks nothing of an emoverse user;
warnings about the user's own settings (e.g. `limit_val_batches`, dataloader workers) stay.
"""

from __future__ import annotations

import logging
import os
import warnings

NOISY_WARNINGS: tuple[str, ...] = (
    # transformers 5 deprecates the attribute peft and transformers' own gradient checkpointing read
    r"`is_gradient_checkpointing` is deprecated",
    # torch deprecates LeafSpec; Lightning's _pytree still uses it
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # torchdata's StatefulDataLoader (the train loader) calls a deprecated torch telemetry hook per iterator
    r"'set_vital' is deprecated",
)
IMPORT_LOGS: dict[str, tuple[str, ...]] = {
    # bitsandbytes tries to load optional CPU kernels (the `kernels` package) when it is imported, and
    # peft imports it whenever it is installed, so every `import emoverse.module` printed this, even
    # for runs that quantize nothing; 4-bit CPU matmuls work without them
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}
"""Filtered from `import emoverse` on (not only in the CLI): the message comes at import time."""
NOISY_LOGS: dict[str, tuple[str, ...]] = {
    **IMPORT_LOGS,
    # advertisements for Lightning's cloud products
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
    "lightning.pytorch.trainer.connectors.logger_connector.logger_connector": ("💡 Tip:",),
    "lightning.pytorch.trainer.connectors.callback_connector": ("💡 Tip:",),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().lstrip().startswith(self.prefixes)


def quiet_third_party() -> None:
    """Install the warning and log filters above (idempotent)."""
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    _drop_logs(NOISY_LOGS)


def quiet_imports() -> None:
    """Install the `IMPORT_LOGS` filters (idempotent; cheap: the loggers exist before their packages
    are imported). `EMOVERSE_DEBUG=1` leaves them out."""
    if os.environ.get("EMOVERSE_DEBUG", "").lower() in ("", "0", "false", "no"):
        _drop_logs(IMPORT_LOGS)


def _drop_logs(logs: dict[str, tuple[str, ...]]) -> None:
    for name, prefixes in logs.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
